"""Object storage against a real S3-compatible server (moto's, started here on 127.0.0.1):
predict from and into a bucket, a template CSV in a bucket, an interrupted run finished with
--resume leaving no temporary objects, and one-line errors for missing credentials or bucket."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, write_broken_files

from maskbatch.config import ClusterConfig
from maskbatch.errors import MaskbatchError
from maskbatch.storage import TEMPORARY, describe_error

pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed")

LOCAL2 = ClusterConfig(workers=2, partition_size=3, progress=False)
PHOTOS = ["0001.jpg", "0002.jpg", "0003.jpg", "0005.jpg", "0010.jpg", "0013.jpg"]


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1, and the environment that points boto at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # worker processes started later inherit it
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # none of another test's server (fsspec caches them)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_server):
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


@pytest.fixture(scope="module")
def photos_bucket(s3, data):
    """s3://photos-in/in/: six medical-mask photos and the broken files every loader meets."""
    s3.mkdir("photos-in")
    for name in PHOTOS:
        s3.put(str(data / "medical-mask" / "images" / name), f"photos-in/in/{name}")
    broken = write_broken_files(Path(os.environ.get("TMPDIR", "/tmp")) / "mb-broken-s3",
                                (data / "medical-mask" / "images" / "0001.jpg").read_bytes())
    for name in broken:
        s3.pipe(f"photos-in/in/{name}", broken[name])
    s3.mkdir("results")
    return "s3://photos-in/in", sorted(PHOTOS + list(broken))


def _objects(s3, prefix: str) -> list[str]:
    s3.invalidate_cache()
    return sorted(s3.find(prefix))


def _env(server_env: dict, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server_env, PYTHONPATH=str(REPO), **extra)
    return env


@pytest.mark.slow
def test_predict_from_and_into_a_bucket(s3, photos_bucket):
    from maskbatch.jobs.predict import predict

    url, names = photos_bucket
    result = predict(url, "s3://results/run-1", cluster_config=LOCAL2, previews=2)
    assert sorted(result.manifest["name"]) == names
    assert (result.manifest.set_index("name").loc[PHOTOS, "status"] == "ok").all()
    assert result.manifest["path"].str.startswith("s3://photos-in/in/").all()
    assert len(result.detections) > 10
    written = {p.rsplit("/", 1)[-1] for p in _objects(s3, "results/run-1")}
    assert {"detections.parquet", "submission.csv", "images.parquet", "summary.json",
            "report.html", "detections.coco.json", "images.coco.json", "0001.jpg"} <= written
    assert not [p for p in written if TEMPORARY.search(p)]
    with s3.open("results/run-1/detections.parquet", "rb") as f:
        pd.testing.assert_frame_equal(pd.read_parquet(f), result.detections, check_dtype=False)
    page = s3.cat("results/run-1/report.html").decode()
    assert "maskbatch run report" in page and "src='http" not in page and "src='previews" not in page


@pytest.mark.slow
def test_template_csv_in_a_bucket(s3, data):
    from maskbatch.jobs.predict import predict

    s3.mkdir("templates")
    for name in PHOTOS[:3]:
        s3.put(str(data / "medical-mask" / "images" / name), f"templates/set/images/{name}")
    order = [PHOTOS[2], PHOTOS[0], PHOTOS[1]]
    s3.pipe("templates/set/submission.csv",
            ("name,x1,x2,y1,y2,classname\n" + "".join(f"{n},,,,,\n" for n in order)).encode())
    result = predict("s3://templates/set/submission.csv", "s3://results/template-run",
                     cluster_config=ClusterConfig(workers=1, progress=False))
    assert list(result.manifest["name"]) == order
    with s3.open("results/template-run/submission.csv", "rb") as f:
        sub = pd.read_csv(f)
    assert list(dict.fromkeys(sub["name"])) == [n for n in order if n in set(sub["name"])]


@pytest.mark.slow
def test_interrupted_run_then_resume_leaves_no_temporary_objects(s3, s3_server, photos_bucket):
    """Kill a real `maskbatch predict` (and its workers) once a partition is committed; an
    object store's rename is copy + delete, so the kill may leave `.tmp-` objects (one is put
    there as well, as a kill between copy and delete leaves it). --resume finishes the run and
    removes them."""
    url, names = photos_bucket
    out = "s3://results/interrupted"
    cmd = [sys.executable, "-m", "maskbatch.cli", "predict", url, "--out", out, "--workers", "1",
           "--partition-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(s3_server), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not any(p.endswith(".images.parquet") for p in _objects(s3, "results/interrupted")):
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no partition committed in time"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        proc.wait(timeout=30)
    committed = [p for p in _objects(s3, "results/interrupted") if p.endswith(".images.parquet")]
    assert 0 < len(committed) < len(names) / 2
    s3.pipe(committed[0].replace(".images.parquet", ".detections.parquet.tmp-0badc0de"), b"half")
    assert [p for p in _objects(s3, "results/interrupted") if TEMPORARY.search(p)]

    done = subprocess.run(cmd + ["--resume"], env=_env(s3_server), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    leftovers = [p for p in _objects(s3, "results/interrupted") if ".tmp-" in p]
    assert leftovers == []
    with s3.open("results/interrupted/images.parquet", "rb") as f:
        manifest = pd.read_parquet(f)
    assert sorted(manifest["name"]) == names  # every photo exactly once


def _run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """`maskbatch ARGS` in this process (a fresh S3 client: credentials are read anew)."""
    import s3fs

    from maskbatch.cli import main

    s3fs.S3FileSystem.clear_instance_cache()
    capsys.readouterr()
    try:
        code = main(args)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    return code, capsys.readouterr().err.strip().splitlines()


def test_missing_credentials_is_one_line(s3_server, photos_bucket, data, tmp_path, monkeypatch,
                                         capsys):
    """Was a 72-line NoCredentialsError traceback."""
    url, _ = photos_bucket
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    for args in (["predict", url, "--out", str(tmp_path / "out"), "--workers", "1"],
                 ["predict", str(data / "messy"), "--out", "s3://results/x", "--workers", "1"]):
        code, lines = _run_cli(args, capsys)
        assert code == 2 and len(lines) == 1, lines
        assert "no credentials for s3://" in lines[0] and "AWS_ACCESS_KEY_ID" in lines[0]


def test_missing_bucket_is_one_line_and_never_created(s3, photos_bucket, tmp_path, capsys):
    url, _ = photos_bucket
    code, lines = _run_cli(["predict", url, "--out", "s3://no-such-bucket/run"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "bucket not found: no-such-bucket" in lines[0]
    s3.invalidate_cache()
    assert not s3.exists("no-such-bucket")
    code, lines = _run_cli(["predict", "s3://no-such-bucket/photos", "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and len(lines) == 1 and "no-such-bucket" in lines[0], lines


def test_describe_error_names_the_problem():
    from botocore.exceptions import ClientError, NoCredentialsError

    assert describe_error(NoCredentialsError(), ["/local", "s3://b/x"]).startswith(
        "no credentials for s3://b/x")
    missing = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "x"}}, "ListObjectsV2")
    assert describe_error(missing, ["s3://gone/x"]) == "bucket not found: gone (for s3://gone/x)"
    assert describe_error(ValueError("x"), ["s3://b/x"]) is None
    assert describe_error(NoCredentialsError(), ["/only/local"]) is None
    with pytest.raises(MaskbatchError):
        raise MaskbatchError(describe_error(missing, ["s3://gone/x"]))
