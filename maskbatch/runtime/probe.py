"""Checks run on every worker before a job's work: workers write their parts into --out
themselves, so a worker that can read the photos but not write --out (a read-only mount, another
user id, no credentials for the bucket) is found before the first task, not by a traceback."""

from __future__ import annotations

import uuid
from typing import Any

from maskbatch import files
from maskbatch.errors import MaskbatchError


def try_write(out_dir: str) -> str | None:
    """On a worker: write and delete a small file in `out_dir` (which the driver made and wrote
    run.json into: a worker that sees another folder there finds none); None, or what went
    wrong."""
    target = files.join(out_dir, f".maskbatch-probe-{uuid.uuid4().hex}")
    try:
        fs, path = files.filesystem(target)
        with fs.open(path, "wb") as handle:
            handle.write(b"probe")
        fs.rm(path)
    except Exception as exc:  # noqa: BLE001 - any failure to write is the answer
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
    return None


def check_workers_write(client: Any, out_dir: str) -> None:
    """Every worker of `client` can write under `out_dir`, else one MaskbatchError naming the fix."""
    answers = client.run(try_write, out_dir)
    failed = {worker: why for worker, why in answers.items() if why}
    if not failed:
        return
    worker, why = sorted(failed.items())[0]
    raise MaskbatchError(
        f"{len(failed)} of {len(answers)} Dask worker(s) cannot write into --out {out_dir} "
        f"(worker {worker}: {why}); workers write their parts there themselves: give every "
        "worker the same folder writable at the same path (a shared read-write volume, not :ro) "
        "or use object storage (s3://...) for --out; nothing was processed")
