"""The output folder's policy: refuse to mix runs, replace or resume only what maskbatch wrote."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from collections.abc import Sequence

from maskbatch import files, storage
from maskbatch.errors import MaskbatchError
from maskbatch.outputs import coco, parts, run_page

# The files a predict run writes at its end from the committed parts: a run (and --resume) removes
# them first, so that an interrupted run never leaves an earlier run's final files behind.
FINAL_OUTPUTS = ("detections.parquet", "submission.csv", "images.parquet", "frames.parquet",
                 "summary.json", coco.RESULTS_FILE, coco.DATASET_FILE, run_page.REPORT_FILE,
                 "crops.parquet")
# What predict and extract write into --out; --overwrite removes these (and the `*.tmp-XXXXXXXX`
# leftovers of interrupted writes), nothing else.
OUTPUT_NAMES = ("run.json", *FINAL_OUTPUTS, parts.PARTS_DIR, "previews", "manifest.parquet",
                "class_counts.png", "crops", "blurred")


def remove_final_outputs(out_dir: str) -> None:
    """Delete the final files of an earlier (or interrupted) run: they are written anew."""
    for name in FINAL_OUTPUTS:
        fs, path = files.filesystem(files.join(out_dir, name))
        if fs.exists(path):
            fs.rm(path)


def _place(url: str) -> tuple[str, str]:
    """(protocol, normalised path) of a folder or file, symbolic links resolved on local disk."""
    if not files.is_url(url):
        return "file", os.path.realpath(files.os_path(url))
    fs, path = files.filesystem(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, posixpath.normpath("/" + path.strip("/"))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_apart_from_inputs(out_dir: str, inputs: Sequence[str]) -> None:
    """Refuse an --out that is, holds or lies inside an input (the photos folder, a template):
    --overwrite and --resume would delete inputs, later runs would list the outputs as inputs."""
    out_protocol, out_path = _place(out_dir)
    for given in inputs:
        protocol, path = _place(given)
        if protocol != out_protocol:
            continue
        if _within(out_path, path):
            where = "is" if out_path == path else "lies inside"
            raise MaskbatchError(f"--out {out_dir} {where} the input {given}; choose an output "
                                 "folder outside the inputs; nothing was changed")
        if _within(path, out_path):
            raise MaskbatchError(f"--out {out_dir} holds the input {given}; choose an output "
                                 "folder outside the inputs; nothing was changed")


def _remove_earlier_run(fs: object, path: str) -> None:
    """Delete what an earlier maskbatch run wrote into the folder, leaving anything else."""
    for name in OUTPUT_NAMES:
        target = posixpath.join(path, name)
        if fs.exists(target):
            fs.rm(target, recursive=fs.isdir(target))
    for leftover in fs.ls(path, detail=False):
        if storage.TEMPORARY.search(leftover):
            fs.rm(leftover)


def _check_writable(out_dir: str, fs: object, path: str) -> None:
    try:
        fs.makedirs(path, exist_ok=True)
        if not files.is_url(out_dir):
            with tempfile.NamedTemporaryFile(dir=files.os_path(path), prefix=".maskbatch-probe-"):
                pass
    except OSError as exc:
        raise MaskbatchError(f"cannot write into --out {out_dir}: "
                             f"{exc.strerror or type(exc).__name__}") from None


def prepare_out_dir(out_dir: str, overwrite: bool, resume: bool = False,
                    inputs: Sequence[str] = ()) -> None:
    """Refuse to mix a new run into a folder holding an older one, unless told what to do; refuse
    an --out that is, holds or lies inside one of `inputs`."""
    storage.check_output_bucket(out_dir)  # fsspec would create a missing bucket
    fs, path = files.filesystem(out_dir)
    if not files.is_url(out_dir) and os.path.islink(path) and not os.path.exists(path):
        raise MaskbatchError(f"--out {out_dir} is a broken symbolic link (to "
                             f"{os.readlink(path)}); nothing was changed")
    check_apart_from_inputs(out_dir, inputs)
    if fs.exists(path) and not fs.isdir(path):
        raise MaskbatchError(f"--out {out_dir} is a file, not a folder")
    existing = fs.ls(path, detail=False) if fs.exists(path) else []
    if existing and resume and not is_maskbatch_output(out_dir):
        raise MaskbatchError(f"refusing to --resume into {out_dir}: it is not a maskbatch output "
                             "folder (no run.json written by maskbatch); nothing was changed")
    if existing and not resume:
        if not overwrite:
            raise MaskbatchError(
                f"output folder {out_dir} is not empty (an earlier run?); use --resume to finish "
                "that run or --overwrite to replace it"
            )
        if not is_maskbatch_output(out_dir):
            raise MaskbatchError(f"refusing to --overwrite {out_dir}: it is not a maskbatch output "
                                 "folder (no run.json written by maskbatch)")
        _remove_earlier_run(fs, path)
    _check_writable(out_dir, fs, path)


def read_run_record(out_dir: str) -> dict | None:
    """The folder's run.json when maskbatch wrote it (an extract or predict run), else None."""
    fs, path = files.filesystem(files.join(out_dir, "run.json"))
    try:
        with fs.open(path, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if (isinstance(record, dict) and record.get("command") in ("extract", "predict")
            and "version" in record):
        return record
    return None


def is_maskbatch_output(out_dir: str) -> bool:
    """True when the folder's run.json was written by maskbatch (extract or predict)."""
    return read_run_record(out_dir) is not None


def check_resumable(out_dir: str, record: dict) -> None:
    """Refuse to --resume a run of another command, model, detector setting or input list."""
    old = read_run_record(out_dir)
    if old is None:
        return  # nothing to resume; prepare_out_dir refuses a folder that is not maskbatch's
    if old.get("command") != "predict":
        raise MaskbatchError(f"cannot --resume {out_dir}: it holds a maskbatch "
                             f"{old.get('command')} run, not a predict run")
    for key in ("model_sha256", "detector", "limits", "inputs_sha1", "video", "privacy"):
        if old.get(key) != record.get(key):
            raise MaskbatchError(f"cannot --resume {out_dir}: its run used a different {key} "
                                 "(use --overwrite to start again)")
