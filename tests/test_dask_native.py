"""Dask the way Dask users run it (issue 39): the active client, Dask config, the dashboard,
--scheduler-file and late workers, and workers that cannot write --out; all on real clusters
(LocalCluster of processes, `dask scheduler` / `dask worker` processes on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import dask
import pytest
from conftest import copy_photos
from distributed import Client, LocalCluster, get_task_stream, performance_report

import maskbatch
import maskbatch.dask
import maskbatch.runtime.hpc
from maskbatch.config import ClusterConfig
from maskbatch.errors import MaskbatchError
from maskbatch.models import classifier
from maskbatch.runtime import cluster, dask_config, window
from maskbatch.runtime.executor import JobSession

DASK = str(Path(sys.executable).with_name("dask"))
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DASK_SCHEDULER_ADDRESS", "DASK_CONFIG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=_env(), **kwargs)


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def _worker(target: list[str], *prefix: str, **kwargs) -> subprocess.Popen:
    """`dask worker` of one thread, no nanny, on 127.0.0.1; target: an address or
    ["--scheduler-file", path]."""
    return _spawn([*prefix, DASK, "worker", *target, "--host", "127.0.0.1", "--nthreads", "1",
                   "--no-nanny", "--no-dashboard"], **kwargs)


@pytest.fixture(scope="module")
def photos(data, tmp_path_factory) -> Path:
    return copy_photos(data, tmp_path_factory.mktemp("photos"), medical_mask=6)


def _models_loaded() -> list[str]:
    return sorted(classifier._CACHE)


def _key_name(key) -> str:
    return key[0] if isinstance(key, tuple) else str(key)


def test_predict_inside_with_client_runs_on_that_clients_cluster(photos, tmp_path):
    """maskbatch.predict inside `with Client(cluster):` started its own LocalCluster: the
    user's cluster got 0 tasks."""
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as lc, \
            Client(lc) as client:
        report = tmp_path / "dask-report.html"  # bokeh's: it needs the dashboard's dependency
        with get_task_stream(client) as stream, performance_report(filename=str(report)):
            result = maskbatch.predict(str(photos), str(tmp_path / "out"), cluster_config=(
                ClusterConfig(partition_size=2, progress=False)))
        assert "partitions-predict" in report.read_text()
        photo_tasks = [t for t in stream.data if _key_name(t["key"]).startswith("partitions-")]
        # every partition ran on the user's cluster, whose workers got the job's model plugin
        assert result.stats.tasks == len(photo_tasks) == 3 and result.counts.ok == 6
        assert result.dashboard == client.dashboard_link
        assert {t["worker"] for t in photo_tasks} <= set(client.nthreads())
        assert all(loaded for loaded in client.run(_models_loaded).values())
        # the job left the user's client and cluster as they were
        assert client.status == "running" and len(client.nthreads()) == 2
        assert dask_config.active_client() is client


def test_dask_api_register_model_uses_the_active_client():
    with LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as lc, \
            Client(lc) as c:
        maskbatch.dask.register_model()
        assert any(name.startswith("maskbatch-setup-") for name in
                   c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins)))
    with pytest.raises(MaskbatchError, match="needs a client"):
        maskbatch.dask.register_model()


def test_scheduler_address_from_dask_config_in_either_spelling():
    assert dask_config.configured_scheduler() is None
    for key in ("scheduler-address", "scheduler_address"):
        with dask.config.set({key: "tcp://127.0.0.1:1"}):
            assert dask_config.configured_scheduler() == "tcp://127.0.0.1:1"
            # the job goes there rather than starting a local cluster
            with pytest.raises(MaskbatchError, match="cannot reach Dask scheduler at "
                                                     "tcp://127.0.0.1:1"):
                with cluster.dask_client(ClusterConfig(progress=False)):
                    pass


def test_allowed_failures_the_user_set_is_kept():
    """allowed-failures was forced to 1 whatever the user's Dask config said."""
    key = "distributed.scheduler.allowed-failures"
    local = ClusterConfig(workers=1, processes=False, progress=False)
    with cluster.dask_client(local) as client:
        assert client.cluster.scheduler.allowed_failures == cluster.LOCAL_ALLOWED_FAILURES
    assert not dask_config.user_set(key)
    with dask.config.set({key: 7}):
        assert dask_config.user_set(key)
        with cluster.dask_client(local) as client:
            assert client.cluster.scheduler.allowed_failures == 7


# run in a fresh interpreter so that DASK_CONFIG (read when dask is imported) takes effect
PROBE = textwrap.dedent("""
    import json, logging
    from maskbatch.config import ClusterConfig
    from maskbatch.runtime import cluster, dask_config

    def warn():
        logging.getLogger("distributed.worker.memory").warning("probe: memory is high")

    if __name__ == "__main__":
        with cluster.dask_client(ClusterConfig(workers=1, progress=False)) as client:
            client.run(warn)
            print(json.dumps({"allowed": client.cluster.scheduler.allowed_failures,
                              "user_logging": dask_config.user_logging()}))
""")


@pytest.mark.parametrize("yaml_text, allowed, warning_shown", [
    (None, 1, True),
    ("distributed:\n  scheduler:\n    allowed-failures: 7\nlogging:\n  distributed: error\n",
     7, False),
])
def test_dask_yaml_config_is_followed_by_local_workers(tmp_path, yaml_text, allowed,
                                                       warning_shown):
    """Local workers' `distributed` logger was set to CRITICAL (memory warnings hidden), and a
    YAML config's allowed-failures was overridden."""
    env = _env()
    if yaml_text:
        (tmp_path / "dask.yaml").write_text(yaml_text)
        env["DASK_CONFIG"] = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"allowed": allowed, "user_logging": bool(yaml_text)}
    assert ("probe: memory is high" in proc.stderr) == warning_shown, proc.stderr[-3000:]


def test_cli_takes_the_scheduler_from_a_dask_yaml_file(photos, tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = _spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                        address.rsplit(":", 1)[1], "--no-dashboard"])
    worker = _worker([address])
    try:
        (tmp_path / "config").mkdir()
        (tmp_path / "config" / "maskbatch.yaml").write_text(f"scheduler-address: {address}\n")
        proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos),
                               "--out", str(tmp_path / "out"), "--partition-size", "3",
                               "--no-progress"], capture_output=True, text=True, timeout=300,
                              env=_env(DASK_CONFIG=str(tmp_path / "config")))
        assert proc.returncode == 0, proc.stderr[-3000:]
        with Client(address, timeout="20s") as client:  # the job's model reached that worker
            loaded = client.run(lambda: sorted(classifier._CACHE))  # by value: no test module there
            assert [shas for shas in loaded.values()] != [[]] and len(loaded) == 1
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["ok"] == 6 and summary["tasks"] == 2
    finally:
        _stop(worker, scheduler)


def test_the_dashboard_link_is_printed_and_answers(capsys):
    """bokeh was in no dependency: the printed link gave "Dask needs bokeh>=3.1.0"."""
    with JobSession(ClusterConfig(workers=1, progress=False)) as session:  # as the CLI's
        printed = capsys.readouterr().out
        assert session.dashboard and session.dashboard.startswith("http://127.0.0.1:")
        assert f"Dask dashboard: {session.dashboard}" in printed  # with progress off too
        with urllib.request.urlopen(session.dashboard, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()


def test_partition_size_waits_for_min_workers_of_a_scheduler_file(tmp_path):
    """A driver that connected before any worker joined chose the partition size for 0 threads;
    --scheduler-file was not accepted."""
    sched_file = str(tmp_path / "scheduler.json")
    scheduler = _spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", sched_file])
    workers: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sched_file):
            assert time.monotonic() < deadline, "the scheduler wrote no scheduler file"
            time.sleep(0.1)
        config = ClusterConfig(scheduler_file=sched_file, min_workers=2, progress=False)
        with pytest.raises(MaskbatchError, match="0 of 2 Dask worker"):
            with JobSession(ClusterConfig(scheduler_file=sched_file, min_workers=2,
                                          worker_timeout=1, progress=False)):
                pass
        workers = [_worker(["--scheduler-file", sched_file]) for _ in range(2)]
        with JobSession(config) as session:  # joins as the workers start
            assert session.partition_size(10_000) == window.choose_partition_size(10_000, 2)
    finally:
        _stop(*workers, scheduler)


def test_scheduler_and_scheduler_file_together_are_refused():
    with pytest.raises(MaskbatchError, match="give one"):
        ClusterConfig(scheduler="tcp://127.0.0.1:8786", scheduler_file="s.json")
    for bad in ({"min_workers": 0}, {"worker_timeout": 0}):
        with pytest.raises(MaskbatchError):
            ClusterConfig(**bad)


def _read_only_worker(address: str, folder: Path) -> subprocess.Popen:
    """A `dask worker` that sees `folder` read-only (a mount namespace of its own with the folder
    bound read-only, what `docker run -v ...:ro` does), as the shipped compose file's workers saw
    --out."""
    mount = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && "
             f"exec {DASK} worker {address} --host 127.0.0.1 --nthreads 1 --no-nanny "
             "--no-dashboard")
    return _spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", mount])


def _can_mount_read_only(folder: Path) -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount --bind {folder} {folder} && "
                            f"mount -o remount,bind,ro {folder} {folder}"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def test_workers_that_cannot_write_out_stop_the_run_before_any_work(photos, tmp_path):
    """Workers that could read the photos but not write --out (compose's `:ro` mount) failed
    each task with a PermissionError traceback."""
    shared = tmp_path / "shared"
    shared.mkdir()
    if not _can_mount_read_only(shared):
        pytest.skip("needs `unshare --mount` (root in a mount namespace) for a read-only worker")
    address = f"tcp://127.0.0.1:{_free_port()}"
    scheduler = _spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                        address.rsplit(":", 1)[1], "--no-dashboard"])
    worker = _read_only_worker(address, shared)
    try:
        out = shared / "out"
        proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos),
                               "--out", str(out), "--scheduler", address, "--no-progress"],
                              capture_output=True, text=True, timeout=300, env=_env())
    finally:
        _stop(worker, scheduler)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "1 of 1 Dask worker(s) cannot write into --out" in lines[0]
    assert "Read-only file system" in lines[0] and "shared read-write volume" in lines[0]
    assert not (out / "parts").exists() and (out / "run.json").exists()


@pytest.mark.parametrize("kind, directive", [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_jobqueue_job_script_runs_maskbatch_workers(kind, directive, photos, tmp_path):
    """HPC was a Slurm script and a dask-jobqueue sketch the README called untested. The job
    script is rendered (no Slurm here), then run as the batch job would run it: its workers
    join the cluster and maskbatch.predict inside `with Client(cluster):` runs on them."""
    venv = str(Path(sys.executable).parents[1])
    with maskbatch.dask.jobqueue_cluster(
            kind, cores=2, memory="3GB", venv=venv, walltime="00:10:00",
            scheduler_options={"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    ) as jq, Client(jq) as client:
        script = jq.job_script()
        lines = script.splitlines()
        command = next(i for i, line in enumerate(lines) if "dask_worker" in line)
        assert any(line.startswith(directive) for line in lines)
        for prologue in (*maskbatch.runtime.hpc.WORKER_PROLOGUE, f"source {venv}/bin/activate"):
            assert lines.index(prologue) < command, script
        worker = shlex.split(lines[command])
        assert worker[0] == f"{venv}/bin/python"
        assert worker[worker.index("--nthreads") + 1] == "1"  # single-threaded processes ...
        assert worker[worker.index("--nworkers") + 1] == "2"  # ... one per core
        if kind == "pbs":
            return
        (tmp_path / "job.sh").write_text(script)
        job = subprocess.Popen(["bash", str(tmp_path / "job.sh")], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        try:
            result = maskbatch.predict(str(photos), str(tmp_path / "out"), cluster_config=(
                ClusterConfig(partition_size=2, min_workers=2, progress=False)))
            assert result.counts.ok == 6 and len(client.nthreads()) == 2
            assert client.run(lambda: os.environ.get("OMP_NUM_THREADS")) != {}
            assert set(client.run(lambda: os.environ.get("OMP_NUM_THREADS")).values()) == {"1"}
        finally:
            os.killpg(job.pid, signal.SIGTERM)
            job.wait(timeout=60)


@pytest.mark.parametrize("flags, words", [
    (["--scheduler", "tcp://127.0.0.1:1", "--scheduler-file", "s.json"], "give one"),
    (["--min-workers", "0"], "min_workers must be at least 1"),
    (["--scheduler-file", "missing.json"], "missing.json: no such file (start `dask scheduler"),
])
def test_cluster_flags_that_cannot_work_are_one_line(photos, tmp_path, flags, words):
    proc = subprocess.run([sys.executable, "-m", "maskbatch.cli", "predict", str(photos), "--out",
                           str(tmp_path / "out"), "--no-progress", *flags], capture_output=True,
                          text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr[-3000:]
