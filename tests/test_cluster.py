"""Real clusters: `dask scheduler` and `dask worker` processes on 127.0.0.1, a worker killed with
SIGKILL mid-job, a photo that kills every worker reading it, an interrupted client resumed, and a
TLS-secured cluster that refuses strangers."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_photos
from distributed import Client
from distributed.security import Security

from maskbatch.config import ClusterConfig
from maskbatch.jobs.predict import predict
from maskbatch.models import classifier
from maskbatch.outputs.parts import CommitLog

DASK = str(Path(sys.executable).with_name("dask"))
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RealCluster:
    """A scheduler and N workers, each its own OS process, on the loopback interface."""

    def __init__(self, workers: int, tls: list[str] | None = None, security=None):
        self.protocol = "tls" if tls else "tcp"
        self.address = f"{self.protocol}://127.0.0.1:{_free_port()}"
        self.tls = tls or []
        self.security = security
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = self._spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", port,
                                      "--protocol", self.protocol, "--no-dashboard", *self.tls])
        self.workers = [self.add_worker() for _ in range(workers)]
        with Client(self.address, security=security, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)

    def _spawn(self, cmd: list[str]) -> subprocess.Popen:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    def add_worker(self) -> subprocess.Popen:
        # --no-nanny: the worker is this very process, so SIGKILL really kills the worker
        return self._spawn([DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                            "--no-nanny", "--no-dashboard", "--protocol", self.protocol,
                            *self.tls])

    def close(self) -> None:
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.scheduler]:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def photos(data, tmp_path_factory) -> Path:
    return copy_photos(data, tmp_path_factory.mktemp("photos"), medical_mask=96)


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> pd.DataFrame:
    """The undisturbed run on a LocalCluster of processes."""
    out = tmp_path_factory.mktemp("ref") / "out"
    result = predict(str(photos), str(out),
                     cluster_config=ClusterConfig(workers=2, partition_size=4, progress=False))
    return result.detections


@pytest.fixture(scope="module")
def cluster():
    c = RealCluster(workers=2)
    yield c
    c.close()


def _parts(out: Path) -> int:
    """Partitions the driver has committed: lines of the commit log (what --resume reads)."""
    return len(CommitLog(str(out)).entries())


def _wait_for_parts(out: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _parts(out) < n:
        assert time.monotonic() < deadline, "the job never committed a partition"
        time.sleep(0.05)


def test_cli_on_real_scheduler_and_workers_equals_local_run(photos, reference, cluster, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos), "--out",
                           str(out), "--scheduler", cluster.address, "--partition-size", "4",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out / "detections.parquet"), reference)
    # the classifier reached every worker through the plugin, checksum-verified there
    with Client(cluster.address) as client:
        loaded = client.run(lambda: sorted(classifier._CACHE))
    sha = reference["model_sha256"].iloc[0]
    assert all(sha in shas for shas in loaded.values())


def test_scheduler_from_environment(photos, reference, cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    result = predict(str(photos), str(tmp_path / "out"),
                     cluster_config=ClusterConfig(partition_size=4, progress=False))
    pd.testing.assert_frame_equal(result.detections, reference)


def test_worker_killed_mid_job(photos, reference, tmp_path):
    victim_cluster = RealCluster(workers=2)
    try:
        out = tmp_path / "out"
        results: dict = {}
        job = threading.Thread(target=lambda: results.setdefault("r", predict(
            str(photos), str(out), cluster_config=ClusterConfig(
                scheduler=victim_cluster.address, partition_size=2, progress=False))))
        job.start()
        _wait_for_parts(out, 3)
        victim = victim_cluster.workers[0]
        victim.send_signal(signal.SIGKILL)
        killed_at = _parts(out)
        job.join(timeout=300)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        assert killed_at < 48, "the worker was killed after the job had finished"
        result = results["r"]
        assert result.manifest["name"].is_unique and len(result.manifest) == 96
        pd.testing.assert_frame_equal(result.detections, reference)
    finally:
        victim_cluster.close()


def test_interrupted_client_resumes_without_redoing_work(photos, reference, cluster, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "maskbatch.cli", "predict", str(photos), "--out", str(out),
           "--scheduler", cluster.address, "--partition-size", "2", "--no-progress"]
    client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_parts(out, 5)
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=30)
    done_before = _parts(out)
    assert 0 < done_before < 48
    assert not (out / "detections.parquet").exists(), "an interrupted run looks complete"

    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    processed = json.loads((out / "summary.json").read_text())["processed_now"]
    assert processed == 96 - 2 * done_before
    assert f"{processed} processed by this run" in resumed.stdout
    pd.testing.assert_frame_equal(pd.read_parquet(out / "detections.parquet"), reference)
    manifest = pd.read_parquet(out / "images.parquet")
    assert manifest["name"].is_unique and len(manifest) == 96


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and one certificate it signed for 127.0.0.1 (scheduler, workers, client)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "maskbatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_cluster_runs_the_job_and_refuses_strangers(photos, reference, tmp_path):
    ca, cert, key = _make_certificates(tmp_path)
    flags = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
    security = Security(tls_ca_file=str(ca), tls_client_cert=str(cert), tls_client_key=str(key),
                        require_encryption=True)
    tls_cluster = RealCluster(workers=2, tls=flags, security=security)
    try:
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos),
                               "--out", str(out), "--scheduler", tls_cluster.address,
                               "--partition-size", "4", "--no-progress", *flags],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        pd.testing.assert_frame_equal(pd.read_parquet(out / "detections.parquet"), reference)

        other = tmp_path / "stranger"
        other.mkdir()
        s_ca, s_cert, s_key = _make_certificates(other)  # a certificate from another CA
        stranger_tls = Security(tls_ca_file=str(s_ca), tls_client_cert=str(s_cert),
                                tls_client_key=str(s_key), require_encryption=True)
        with pytest.raises((OSError, TimeoutError)):
            Client(tls_cluster.address, security=stranger_tls, timeout="5s")
        plain = tls_cluster.address.replace("tls://", "tcp://")
        with pytest.raises((OSError, TimeoutError)):
            Client(plain, timeout="5s")
        stranger = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos),
                                   "--out", str(tmp_path / "x"), "--scheduler",
                                   tls_cluster.address, "--no-progress"],
                                  capture_output=True, text=True, timeout=120)
        assert stranger.returncode == 2 and "uses TLS" in stranger.stderr
        wrong_ca = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos),
                                   "--out", str(tmp_path / "y"), "--scheduler",
                                   tls_cluster.address, "--no-progress", "--tls-ca-file",
                                   str(s_ca), "--tls-cert", str(s_cert), "--tls-key", str(s_key)],
                                  capture_output=True, text=True, timeout=120)
        assert wrong_ca.returncode == 2 and "cannot reach Dask scheduler" in wrong_ca.stderr
    finally:
        tls_cluster.close()


def test_local_cluster_workers_keep_glibc_malloc_defaults(monkeypatch):
    """Dask's nanny would export MALLOC_TRIM_THRESHOLD_=65536 (17-19 % slower res10 passes)."""
    from maskbatch.runtime.cluster import dask_client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with dask_client(ClusterConfig(workers=1, progress=False)) as client:
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                   os.environ.get("OMP_NUM_THREADS")))
    assert list(seen.values()) == [(None, "1")]


def test_worker_malloc_choice(monkeypatch, tmp_path):
    """$MASKBATCH_WORKER_MALLOC: 'system', a library's path, or a clear error for a missing one."""
    from maskbatch.errors import MaskbatchError
    from maskbatch.runtime.cluster import WORKER_MALLOC_ENV, worker_malloc

    monkeypatch.setenv(WORKER_MALLOC_ENV, "system")
    assert worker_malloc() is None
    own = tmp_path / "libmymalloc.so"
    own.write_bytes(b"")
    monkeypatch.setenv(WORKER_MALLOC_ENV, str(own))
    assert worker_malloc() == str(own)
    monkeypatch.setenv(WORKER_MALLOC_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(MaskbatchError, match="MASKBATCH_WORKER_MALLOC=.*missing.so: no such file"):
        worker_malloc()


def test_missing_worker_malloc_is_one_line(data, tmp_path):
    env = {**os.environ, "MASKBATCH_WORKER_MALLOC": str(tmp_path / "missing.so")}
    proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict",
                           str(data / "voc-masks" / "images"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "missing.so: no such file" in proc.stderr


def _allocator() -> tuple[bool, bool]:
    """In a worker: (tcmalloc mapped into the process, malloc_trim skipped)."""
    from maskbatch.runtime import window

    with open("/proc/self/maps") as maps:
        return "libtcmalloc" in maps.read(), window._malloc_trim() is None


def test_local_workers_preload_tcmalloc_and_the_driver_stays_clean(monkeypatch):
    """Flat worker memory comes from tcmalloc (docs/benchmarks.md); 'system' keeps glibc's."""
    from maskbatch.runtime.cluster import WORKER_MALLOC_ENV, dask_client, worker_malloc

    monkeypatch.delenv(WORKER_MALLOC_ENV, raising=False)
    if worker_malloc() is None:
        pytest.skip("tcmalloc is not installed (Debian/Ubuntu: apt-get install "
                    "libtcmalloc-minimal4; .ci/run installs it where it can)")
    before = os.environ.get("LD_PRELOAD")
    with dask_client(ClusterConfig(workers=1, progress=False)) as client:
        assert list(client.run(_allocator).values()) == [(True, True)]
        # a worker the nanny restarts gets tcmalloc again, and the nanny exports it into the
        # driver's environment once more: a program the driver started later ran with it (and
        # 1 in 20 such processes aborted at exit: "terminate called without an active exception")
        pid = next(iter(client.run(os.getpid).values()))
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                pids = list(client.run(os.getpid).values())
            except Exception:  # the worker going away under the call
                pids = []
            if pids and pids != [pid]:
                break
            time.sleep(0.2)
        assert list(client.run(_allocator).values()) == [(True, True)]
    assert os.environ.get("LD_PRELOAD") == before
    monkeypatch.setenv(WORKER_MALLOC_ENV, "system")
    with dask_client(ClusterConfig(workers=1, progress=False)) as client:
        assert list(client.run(_allocator).values()) == [(False, False)]


def test_partitions_run_through_the_trimming_wrapper():
    """Every TRIM_EVERY partitions a worker returns freed memory; the result is untouched."""
    from maskbatch.runtime import window

    before = window._partitions_run
    results = [window._work_then_trim([i, i], lambda items, k: sum(items) * k, k=3)
               for i in range(window.TRIM_EVERY)]
    assert results == [6 * i for i in range(window.TRIM_EVERY)]
    assert window._partitions_run == before + window.TRIM_EVERY


def test_a_photo_that_kills_its_workers_is_isolated(photos, reference, tmp_path):
    """A partition whose workers keep dying is narrowed to the one photo, which fails with a
    reason; every other photo is processed and committed as in a clean run.

    The real job's worker function, on a real LocalCluster of processes; the poison is a real
    kill: the worker process exits (os._exit) whenever it reaches one photo's name.
    """
    import functools

    from maskbatch import tasks
    from maskbatch.config import DetectorConfig
    from maskbatch.jobs import predict as predict_job
    from maskbatch.models.classifier import default_model_dir, read_model
    from maskbatch.outputs import parts
    from maskbatch.runtime import cluster, window

    inputs = predict_job.list_inputs(str(photos))[:24]
    poison = inputs[9][0]
    onnx, card = read_model()
    ref = classifier.ModelRef(card["onnx_sha256"], str(default_model_dir() / "model.onnx"))
    out = str(tmp_path / "out")

    def deadly(pairs, **kwargs):
        if any(name == poison for _, (name, _) in pairs):
            os._exit(1)  # the worker process dies, as on a segfault or the OOM killer
        return tasks.predict_and_commit(pairs, **kwargs)

    log = CommitLog(out)
    with cluster.dask_client(ClusterConfig(workers=2, progress=False)) as client:
        cluster.install_plugin(client, cluster.MaskbatchSetup(onnx, card))
        stats = window.run_partitions(
            client, window.contiguous_partitions(enumerate(inputs), 8), deadly,
            lambda _, entry: log.append(entry), on_poison=functools.partial(tasks.predict_poisoned, out),
            progress=False, out_dir=out, detector=DetectorConfig(), model=ref)
    log.close()
    assert stats.poisoned == 1 and stats.killed >= 4  # 8 -> 4 -> 2 -> 1, two attempts each
    parts.compact(out, [name for name, _ in inputs])
    manifest = pd.read_parquet(Path(out) / "images.parquet")
    assert list(manifest["name"]) == [name for name, _ in inputs]
    failed = manifest[manifest["status"] != "ok"]
    assert list(failed["name"]) == [poison]
    assert failed["reason"].iloc[0] == "the worker died while reading it (2 attempts)"
    detections = pd.read_parquet(Path(out) / "detections.parquet")
    expected = reference[reference["name"].isin(set(manifest["name"]) - {poison})]
    pd.testing.assert_frame_equal(detections, expected.reset_index(drop=True))


def test_submission_window_is_bounded():
    """Partitions are pulled from the stream only as tasks finish: a window per thread."""
    from maskbatch.runtime import cluster, window

    pulled = []

    def stream():
        for i in range(120):
            pulled.append(i)
            yield [i]

    ahead = []
    with cluster.dask_client(ClusterConfig(workers=2, processes=False, progress=False)) as client:
        threads = window.total_threads(client)
        stats = window.run_partitions(client, stream(), lambda items: items[0] * 2,
                                       lambda items, r: ahead.append(len(pulled) - len(ahead)),
                                       window_per_thread=2, progress=False)
    assert stats.completed == stats.tasks == 120 and len(pulled) == 120
    # when a result lands, the stream has given at most a window beyond the results handed back
    assert stats.max_in_flight <= 2 * threads and max(ahead) <= 2 * threads
