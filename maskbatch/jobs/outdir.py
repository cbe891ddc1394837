"""The output folder's policy: refuse to mix runs, replace or resume only what maskbatch wrote,
and one run at a time (an exclusive lock on the folder, :func:`out_dir_lock`)."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import posixpath
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

try:
    import fcntl
except ImportError:  # not on Windows: the lock file alone, its pid and host
    fcntl = None  # type: ignore[assignment]

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
    existing = [p for p in (fs.ls(path, detail=False) if fs.exists(path) else [])
                if files.basename(p) != LOCK_FILE]
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
    _check_writable(out_dir, fs, path)
    _take_pending_lock(out_dir)  # before anything of an earlier run is removed
    if existing and not resume:
        _remove_earlier_run(fs, path)


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


# --------------------------------------------------------------------------- the folder's lock

# The lock of the run writing into --out (out_dir_lock): one of maskbatch's own names, but never
# in OUTPUT_NAMES: --overwrite leaves it alone, and a folder holding only a lock is empty.
LOCK_FILE = ".maskbatch.lock"

F = TypeVar("F", bound=Callable[..., Any])
_pending = threading.local()  # {folder key: OutDirLock} of the out_dir_lock blocks of a thread


class OutDirLock:
    """The exclusive lock of one run on its --out: the file LOCK_FILE in the folder.

    On local disk (and NFS) the file is created with O_CREAT | O_EXCL, so exactly one run gets
    it, holds an flock on it while it runs and deletes it at the end. A lock left by a run that
    was killed is taken over when its pid is gone on this host and nothing holds its flock (the
    kernel drops a dead process's flock); a lock of another host is never taken over: the
    refusal says which file to delete if that run is gone.

    On object storage (s3://, gs://, az://) there is no atomic create-if-absent through fsspec:
    the lock object is read, written when absent or stale, and read back (two runs started
    within the same second can still both pass). Locks and the refusal work as on disk.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.fs, folder = files.filesystem(out_dir)
        self.local = not files.is_url(out_dir)
        # on local disk the OS's name (files.os_path): the lock is opened with os.open
        self.path = posixpath.join(files.os_path(folder) if self.local else folder, LOCK_FILE)
        self.token = uuid.uuid4().hex
        self.held = False
        self._fd: int | None = None

    def record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def acquire(self) -> None:
        """Take the lock, or raise MaskbatchError naming the run that holds it."""
        if self.held:
            return
        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        if self.local:
            self._acquire_local()
        else:
            self._acquire_object()
        self.held = True

    def _acquire_local(self) -> None:
        path = self.path
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._take_over_local(path):
                    return
                continue  # the holder removed it meanwhile: try again
            _flock(fd, blocking=True)
            self._write_fd(fd)
            return
        raise self._refusal(_read_json(path))

    def _take_over_local(self, path: str) -> bool:
        """True when the lock at `path` was stale and is ours now; False when it vanished."""
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        holder = _read_json(path)
        flocked = _flock(fd, blocking=False)
        if flocked is None:  # no flock here: the pid and host decide
            stale = _is_stale(holder)
        else:  # a live run holds its flock: free, the run is gone (unless on another host)
            stale = flocked and (_of_this_host(holder) or (holder is None and _age(fd) > 30))
        if not stale or not _same_file(fd, path):
            os.close(fd)
            if stale or not os.path.exists(path):
                return False  # replaced or removed meanwhile: look again
            raise self._refusal(holder)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        self._write_fd(fd)
        return True

    def _write_fd(self, fd: int) -> None:
        os.write(fd, json.dumps(self.record()).encode())
        os.fsync(fd)
        self._fd = fd  # kept open: its flock lasts as long as this run

    def _acquire_object(self) -> None:
        holder = _read_json(self.path, self.fs)
        if holder is not None and not _is_stale(holder):
            raise self._refusal(holder)
        with self.fs.open(self.path, "wb") as f:
            f.write(json.dumps(self.record()).encode())
        written = _read_json(self.path, self.fs)
        if not written or written.get("token") != self.token:
            raise self._refusal(written or {})

    def _refusal(self, holder: dict | None) -> MaskbatchError:
        holder = holder or {}
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
               f"{holder.get('started', '?')}" if holder else "starting now")
        if holder.get("host") == socket.gethostname():
            then = "wait for it to end (or stop it), then run again"
        else:
            then = f"if that run is gone, delete {files.join(self.out_dir, LOCK_FILE)}"
        return MaskbatchError(f"--out {self.out_dir} is in use by another maskbatch run ({who}); "
                              f"{then}; nothing was changed")

    def release(self) -> None:
        """Delete the lock if it is still ours (a no-op when it was never taken)."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(OSError):
            holder = _read_json(self.path, None if self.local else self.fs)
            if holder and holder.get("token") == self.token:
                if self.local:
                    os.unlink(self.path)
                else:
                    self.fs.rm(self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _flock(fd: int, blocking: bool) -> bool | None:
    """An exclusive flock on fd: True when taken, False when another process holds it, None
    where there is no flock (Windows, a file system without it)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _age(fd: int) -> float:
    return time.time() - os.fstat(fd).st_mtime


def _of_this_host(holder: dict | None) -> bool:
    return bool(holder) and holder.get("host") == socket.gethostname()


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _read_json(path: str, fs: object | None = None) -> dict | None:
    try:
        if fs is None:
            with open(path, "rb") as f:
                data = f.read()
        else:
            with fs.open(path, "rb") as f:
                data = f.read()
        record = json.loads(data)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _is_stale(holder: dict | None) -> bool:
    """A lock of a run on this host whose process is gone. An empty or unreadable lock is not
    stale: its run may be writing it right now."""
    if not _of_this_host(holder):
        return False
    try:
        pid = int(holder.get("pid", 0))
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError, TypeError, OverflowError):
        return False  # alive under another user (PermissionError), or no pid to check
    return False


def _key(out_dir: str) -> tuple[str, str]:
    return _place(out_dir)


def _take_pending_lock(out_dir: str) -> None:
    """prepare_out_dir's hook: take the lock of the out_dir_lock block around this call, once
    the folder is known to be fit to write into (nothing is created before its checks)."""
    lock = getattr(_pending, "locks", {}).get(_key(out_dir))
    if lock is not None:
        lock.acquire()


@contextlib.contextmanager
def out_dir_lock(out_dir: str) -> Iterator[OutDirLock]:
    """One run at a time in `out_dir`: the lock is taken by prepare_out_dir inside this block
    (after its checks, before it removes or writes anything) and released at the block's end.

    A second run into a folder held by a live run stops with one line naming the holder (pid,
    host, start time); the lock of a dead run on this host is taken over.
    """
    lock = OutDirLock(out_dir)
    locks = _pending.__dict__.setdefault("locks", {})
    key = _key(out_dir)
    outer = locks.get(key)
    locks[key] = lock
    try:
        yield lock
    finally:
        if outer is None:
            locks.pop(key, None)
        else:
            locks[key] = outer
        lock.release()


def with_out_dir_lock(job: F) -> F:
    """Decorate a job taking `out_dir`: its whole call runs inside out_dir_lock(out_dir)."""
    signature = inspect.signature(job)

    @functools.wraps(job)
    def locked(*args: Any, **kwargs: Any) -> Any:
        out_dir = signature.bind(*args, **kwargs).arguments["out_dir"]
        with out_dir_lock(out_dir):
            return job(*args, **kwargs)

    return locked  # type: ignore[return-value]
