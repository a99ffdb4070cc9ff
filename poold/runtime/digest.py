"""The sha256 of a file, read in chunks (modules and interpreters are up to ~100 MB)."""

from __future__ import annotations

import hashlib
import os

CHUNK = 1024 * 1024


def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Hex sha256 and size of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
