"""Replacing a file so that a reader sees all of it or none of it: the one way.

A file is written under a temporary name in its own folder, flushed, fsynced,
closed, then renamed over its final name, and the folder is fsynced so the
rename itself survives a power cut. A rename within one folder is atomic on
local disks and on NFS, so a reader that opens the exact final path never sees
half a file. With ``fsync=False`` both fsyncs are skipped (a crash of the
machine may then lose the file, never tear it).

Every writer of a file another process or a restart reads goes through here:
the slot protocol (:mod:`poold.slots`), the job journal's compaction, the
module store, the compile cache, the pool overrides, the client's config.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024


def temp_name(path: Path) -> Path:
    """A fresh hidden name beside ``path``: the same folder, so the rename is atomic."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename into ``folder`` durable. Filesystems that cannot fsync a
    folder (some FUSE ones) say EINVAL; their renames are as durable as they get."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path, *, fsync: bool = True) -> None:
    """Rename ``tmp`` (complete, and fsynced if ``fsync``) over ``path``, in the same folder."""
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


@contextmanager
def atomic_writer(path: Path, *, fsync: bool = True, mode: int | None = None) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content into; it replaces ``path`` when the
    block ends without an exception, and is removed otherwise. ``mode``: exact
    permission bits (the umask does not cut them), else the default for new files."""
    tmp = temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        commit(tmp, path, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, *, fsync: bool = True, mode: int | None = None) -> None:
    with atomic_writer(path, fsync=fsync, mode=mode) as f:
        f.write(data)


def copy_atomic(src: Path, path: Path, *, fsync: bool = True) -> None:
    """Copy ``src``'s bytes to ``path`` (never a link: ``src`` may be rewritten later)."""
    with atomic_writer(path, fsync=fsync) as fout, open(src, "rb") as fin:
        shutil.copyfileobj(fin, fout, CHUNK)


def place_atomic(src: Path, path: Path, *, fsync: bool = True) -> None:
    """Put ``src``'s content at ``path``.

    Where both are on one filesystem, a hard link replaces the copy: the callers'
    sources are never rewritten in place (the module store is content-addressed
    and renames new files in), and readers only read, so no writer can change
    one name through the other. Across filesystems (poold's disk to NFS) the
    bytes are copied."""
    tmp = temp_name(path)
    try:
        os.link(src, tmp)
    except OSError:
        copy_atomic(src, path, fsync=fsync)
        return
    try:
        commit(tmp, path, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
