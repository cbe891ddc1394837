"""The settings refuse what cannot work once, in maskbatch.config: the CLI, maskbatch.predict and
the Dask API (maskbatch.dask.predict, predict_with_manifest) give the same one-line message."""

from __future__ import annotations

import dataclasses
import math

import dask.bag as db
import pytest

import maskbatch
import maskbatch.dask
from maskbatch import cli
from maskbatch.config import (
    ClusterConfig,
    DetectorConfig,
    InputLimits,
    OutputOptions,
    PredictSettings,
    VideoSampling,
    predict_settings,
)
from maskbatch.errors import MaskbatchError

# (CLI flags, the keyword arguments of maskbatch.predict that ask for the same, message start)
REFUSALS = [
    (["--confidence", "2"], lambda: {"detector": DetectorConfig(confidence=2.0)},
     "confidence must be between 0 and 1, got 2.0"),
    (["--confidence", "-1"], lambda: {"detector": DetectorConfig(confidence=-1.0)},
     "confidence must be between 0 and 1"),
    (["--confidence", "nan"], lambda: {"detector": DetectorConfig(confidence=math.nan)},
     "confidence must be between 0 and 1, got nan"),
    (["--gamma", "0"], lambda: {"detector": DetectorConfig(gamma=0.0)}, "gamma must be above 0"),
    (["--gamma", "inf"], lambda: {"detector": DetectorConfig(gamma=math.inf)},
     "gamma must be a finite number above 0"),
    (["--min-face", "-5"], lambda: {"detector": DetectorConfig(min_face=-5)},
     "min_face must be 0 or more, got -5"),
    (["--mode", "bogus"], lambda: {"detector": DetectorConfig(mode="bogus")},
     "unknown detector mode 'bogus'; choose from tuned, yunet, seed"),
    (["--max-bytes", "-1"], lambda: {"limits": InputLimits(max_bytes=-1)},
     "max_bytes must be at least 1, got -1"),
    (["--max-pixels", "0"], lambda: {"limits": InputLimits(max_pixels=0)},
     "max_pixels must be at least 1"),
    (["--max-pixels", "1000G"], lambda: {"limits": InputLimits(max_pixels=10**12)},
     "max_pixels can be at most 1,073,741,824"),
    (["--read-timeout", "-1"], lambda: {"limits": InputLimits(read_timeout=-1.0)},
     "read_timeout must be above 0 seconds, got -1.0"),
    (["--read-timeout", "nan"], lambda: {"limits": InputLimits(read_timeout=math.nan)},
     "read_timeout must be a finite number above 0 seconds"),
]
# Refused by the batch job (CLI and maskbatch.predict); the Dask API has no such setting.
JOB_REFUSALS = [
    (["--fps", "1e7"], {"fps": 1e7}, "fps can be at most 1000 frames a second"),
    (["--fps", "0"], {"fps": 0.0}, "fps must be above 0"),
    (["--segment-seconds", "1e-5"], {"segment_seconds": 1e-5},
     "segment_seconds must be at least 1"),
    (["--previews", "-1"], {"previews": -1}, "previews must be 0 or more, got -1"),
    (["--resume", "--overwrite"], {"resume": True, "overwrite": True},
     "--resume and --overwrite contradict each other"),
    (["--workers", "0"], {"cluster_config": None}, "workers must be at least 1, got 0"),
    (["--partition-size", "0"], {"cluster_config": None},
     "partition_size must be at least 1, got 0"),
    (["--classes", "4"], {"classes": 4}, None),  # argparse's choices: its own line
]


def _cli_error(flags: list[str], capsys) -> str:
    try:
        code = cli.main(["predict", "photos", "--out", "out", *flags])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flags, api_kwargs, message", REFUSALS,
                         ids=[" ".join(f) for f, _, _ in REFUSALS])
def test_each_refusal_is_the_same_through_the_cli_the_job_and_the_dask_api(
        flags, api_kwargs, message, capsys):
    assert _cli_error(flags, capsys).startswith(f"maskbatch predict: error: {message}")
    bag = db.from_sequence(["photo.jpg"])
    for call in (lambda: maskbatch.predict("photos", "out", **api_kwargs()),
                 lambda: maskbatch.dask.predict(bag, **api_kwargs()),
                 lambda: maskbatch.dask.predict_with_manifest(bag, **api_kwargs())):
        with pytest.raises(MaskbatchError) as refused:
            call()
        assert str(refused.value).startswith(message)
        assert "\n" not in str(refused.value)


@pytest.mark.parametrize("flags, kwargs, message", JOB_REFUSALS,
                         ids=[" ".join(f) for f, _, _ in JOB_REFUSALS])
def test_job_settings_are_refused_alike_by_the_cli_and_maskbatch_predict(
        flags, kwargs, message, capsys):
    err = _cli_error(flags, capsys)
    if message is None:
        assert "invalid choice" in err
        message = "--classes must be one of 2, 3"
    else:
        assert err.startswith(f"maskbatch predict: error: {message}"), err
    if kwargs.get("cluster_config", 0) is None:  # the cluster's refusal comes from its own object
        with pytest.raises(MaskbatchError, match=message):
            ClusterConfig(**{flags[0][2:].replace("-", "_"): int(flags[1])})
        return
    with pytest.raises(MaskbatchError) as refused:
        maskbatch.predict("photos", "out", **kwargs)
    assert str(refused.value).startswith(message)


def test_a_changed_copy_is_checked_too():
    with pytest.raises(MaskbatchError, match="confidence must be between 0 and 1"):
        dataclasses.replace(DetectorConfig(), confidence=1.5)
    with pytest.raises(MaskbatchError, match="must be a number"):
        DetectorConfig(gamma="2")
    with pytest.raises(MaskbatchError, match="must be a whole number"):
        InputLimits(max_bytes=1.5)


def test_the_wrong_kind_of_settings_object_is_refused_by_every_entry_point():
    bag = db.from_sequence(["photo.jpg"])
    message = "detector must be a maskbatch.config.DetectorConfig, got dict"
    for call in (lambda: maskbatch.predict("photos", "out", detector={"confidence": 0.5}),
                 lambda: maskbatch.dask.predict(bag, detector={"confidence": 0.5}),
                 lambda: maskbatch.dask.predict_with_manifest(bag, detector={"confidence": 0.5})):
        with pytest.raises(MaskbatchError, match=message):
            call()


def test_settings_resolve_given_then_environment_then_default(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("MASKBATCH_MODEL", raising=False)
    default = predict_settings()
    assert default == PredictSettings()
    assert default.cluster.scheduler is None and default.model is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:1")
    monkeypatch.setenv("MASKBATCH_MODEL", "/models/mine")
    from_env = predict_settings()
    assert from_env.cluster.scheduler == "tcp://127.0.0.1:1" and from_env.model == "/models/mine"
    given = predict_settings(cluster=ClusterConfig(scheduler="tcp://127.0.0.1:2"), model="/m")
    assert given.cluster.scheduler == "tcp://127.0.0.1:2" and given.model == "/m"
    # --classes names a bundled model: the environment's model is not used for it
    assert predict_settings(classes=3).model is None
    assert VideoSampling().fps == 1.0 and OutputOptions().previews == 0


def test_importing_maskbatch_sets_no_environment_variable():
    import os
    import subprocess
    import sys
    code = ("import os; before = dict(os.environ); import maskbatch, maskbatch.config; "
            "import maskbatch.pipeline; print(sorted(set(os.environ) - set(before)))")
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.strip()
    assert out == "[]"


def test_resume_with_another_per_photo_budget_is_refused(data, tmp_path):
    """A run with --max-pixels 1M, then --resume without it: 12 photos stayed failed for a limit
    no longer asked for. The budget is in run.json now, and --resume compares it."""
    import json
    import shutil
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("0001.jpg", "0002.jpg"):
        shutil.copy(data / "medical-mask" / "images" / name, photos / name)
    out = tmp_path / "out"
    local = ClusterConfig(workers=1, processes=False, progress=False)
    small = InputLimits(max_pixels=100_000)
    maskbatch.predict(str(photos), str(out), cluster_config=local, limits=small)
    assert json.loads((out / "run.json").read_text())["limits"] == small.as_dict()
    with pytest.raises(MaskbatchError, match="its run used a different limits"):
        maskbatch.predict(str(photos), str(out), cluster_config=local, resume=True)
    resumed = maskbatch.predict(str(photos), str(out), cluster_config=local, limits=small,
                                resume=True)
    assert resumed.processed == 0 and len(resumed.manifest) == 2
