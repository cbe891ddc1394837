"""The output folder's policy: refuse to mix runs, replace or resume only what maskbatch wrote."""

from __future__ import annotations

import json

from maskbatch import files, storage
from maskbatch.errors import MaskbatchError


def prepare_out_dir(out_dir: str, overwrite: bool, resume: bool = False) -> None:
    """Refuse to mix a new run into a folder holding an older one, unless told what to do."""
    storage.check_output_bucket(out_dir)  # fsspec would create a missing bucket
    fs, path = files.filesystem(out_dir)
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
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)


def is_maskbatch_output(out_dir: str) -> bool:
    """True when the folder's run.json was written by maskbatch (extract or predict)."""

    fs, path = files.filesystem(files.join(out_dir, "run.json"))
    try:
        with fs.open(path, "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("command") in ("extract", "predict")
            and "version" in record)


def check_resumable(out_dir: str, record: dict) -> None:
    run_json = files.join(out_dir, "run.json")
    fs, path = files.filesystem(run_json)
    if not fs.exists(path) or not is_maskbatch_output(out_dir):
        return  # nothing to resume; prepare_out_dir refuses a folder that is not maskbatch's

    with fs.open(path, "rb") as f:
        old = json.loads(f.read())
    if old.get("command") != "predict":
        raise MaskbatchError(f"cannot --resume {out_dir}: it holds a maskbatch "
                             f"{old.get('command')} run, not a predict run")
    for key in ("model_sha256", "detector", "inputs_sha1", "video"):
        if old.get(key) != record.get(key):
            raise MaskbatchError(f"cannot --resume {out_dir}: its run used a different {key} "
                                 "(use --overwrite to start again)")

