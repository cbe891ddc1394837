"""Model files shipped inside other PyPI wheels: find a package's folder without importing it,
and checksum a file."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def package_dir(package: str) -> Path | None:
    """The installed folder of `package`, found without running its __init__; None if absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes (`algorithm`: a hashlib name such as "sha1", "sha256")."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

