"""Pruning the shared volume's runtimes folder (poold/modules/prune.py): what no
config uses, no job names and no replica used for the retention goes, with its bytes
counted; everything else, and anything poold did not make, stays. Real files; time
passes by ageing them (``os.utime``) or by pruning with a later ``now``."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from poold.modules import prune as prune_module
from poold.modules import shared as shared_module
from poold.modules.prune import CURRENT, InUse, Removed, prune, touch
from poold.modules.shared import COMPILED, MODULE, publish_artifact, publish_files
from poold.protocol import JobDocument, PartitionRef
from poold.runtime.engine import CompileCache, artifact_path
from poold.slots import Slot, write_json_atomic
from poold.types import PodName

DAY = 86400.0
OLD = "python-0123456789ab"
NEW = "python-ba9876543210"
OLD_SHA = "a" * 64
NEW_SHA = "b" * 64


def _age(path: Path, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


def _folder(root: Path, name: str, *, age: float = 2 * DAY) -> Path:
    """A runtime's published folder: 1000 + 234 bytes of files."""
    folder = root / name
    (folder / "mounts" / "0").mkdir(parents=True)
    (folder / MODULE).write_bytes(b"\0asm" + b"m" * 996)
    (folder / "mounts" / "0" / "lib.py").write_bytes(b"l" * 234)
    _age(folder, age)
    return folder


def _artifact(root: Path, sha: str, *, fuel: bool = False, version: str = CURRENT,
              size: int = 300, age: float = 2 * DAY) -> Path:
    path = root / COMPILED / version / ("fuel" if fuel else "plain") / f"{sha}.cwasm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"c" * size)
    _age(path, age)
    return path


def _job(slots: Path, *, runtime_dir: str, sha256: str) -> Path:
    """A runner pod's slot holding a runtime job's document, as the scheduler writes it."""
    slot = Slot.of(slots, PodName("poold-w-0123456789"))
    slot.create()
    document = JobDocument(
        job_id="j-1", sha256=sha256, size=100, args=[], env=[], timeout_s=60, memory_mb=64,
        fuel=None, input=None, output=PartitionRef("out", 0, 0), mounts=[["mounts/0", "/lib"]],
        script="script", runtime="python", runtime_dir=runtime_dir)
    write_json_atomic(slot.job_json, document.to_json(), fsync=False)
    return slot.job_json


@pytest.fixture
def slots(tmp_path: Path) -> Path:
    root = tmp_path / "slots"
    (root / "runtimes").mkdir(parents=True)
    return root


def _prune(slots: Path, *, now: float | None = None,
           in_use: InUse | None = None) -> list[Removed]:
    return prune(slots / "runtimes", slots_root=slots,
                 in_use=in_use or InUse(folders=frozenset({NEW}), artifacts=frozenset({NEW_SHA})),
                 retention_s=DAY, now=now)


def test_unused_entries_past_the_retention_are_removed_with_their_bytes(
        slots: Path, tmp_path: Path) -> None:
    root = slots / "runtimes"
    outside = tmp_path / "operator.txt"
    outside.write_text("not poold's\n")
    old = _folder(root, OLD)
    (old / "link").symlink_to(outside)  # removed as a link, never followed
    _age(old, 2 * DAY)
    new = _folder(root, NEW, age=30 * DAY)  # the config's: however old
    old_plain = _artifact(root, OLD_SHA)
    older_wasmtime = _artifact(root, NEW_SHA, fuel=True, version="wasmtime-1.0.0", size=200)
    current = [_artifact(root, NEW_SHA, fuel=fuel, age=30 * DAY) for fuel in (False, True)]

    removed = _prune(slots)

    assert sorted(removed, key=lambda r: r.bytes) == [
        Removed(path=f"{COMPILED}/wasmtime-1.0.0/fuel/{NEW_SHA}.cwasm", kind="artifact",
                bytes=200),
        Removed(path=f"{COMPILED}/{CURRENT}/plain/{OLD_SHA}.cwasm", kind="artifact", bytes=300),
        Removed(path=OLD, kind="folder", bytes=1234),
    ]
    assert not old.exists() and not old_plain.exists() and not older_wasmtime.exists()
    assert outside.read_text() == "not poold's\n"
    assert (new / MODULE).is_file() and all(p.is_file() for p in current)
    assert sorted(os.listdir(root)) == [COMPILED, NEW]  # nothing left aside
    assert _prune(slots) == []


def test_an_entry_a_job_document_names_is_kept_past_the_retention(slots: Path) -> None:
    """A runner pod adopted by a restarted poold may still run a job from the old version."""
    root = slots / "runtimes"
    old = _folder(root, OLD)
    artifacts = [_artifact(root, OLD_SHA, fuel=True),
                 _artifact(root, OLD_SHA, version="wasmtime-1.0.0")]  # the pod's wasmtime
    job = _job(slots, runtime_dir=OLD, sha256=OLD_SHA)

    assert _prune(slots) == []
    assert (old / MODULE).is_file() and all(p.is_file() for p in artifacts)

    job.unlink()  # the slot cleared for the worker's next job
    assert {r.path for r in _prune(slots)} == {
        OLD, *(p.relative_to(root).as_posix() for p in artifacts)}


def test_an_entry_used_within_the_retention_is_kept(slots: Path) -> None:
    root = slots / "runtimes"
    old = _folder(root, OLD, age=DAY - 600)
    artifact = _artifact(root, OLD_SHA, age=DAY - 600)
    assert _prune(slots) == []
    assert old.is_dir() and artifact.is_file()
    assert {r.path for r in _prune(slots, now=time.time() + 1200)} == {
        OLD, artifact.relative_to(root).as_posix()}


def test_what_poold_did_not_make_is_left_alone(slots: Path, tmp_path: Path) -> None:
    """Links (even named as poold names its entries) are never followed nor removed;
    files and folders of other names stay, however old."""
    root = slots / "runtimes"
    elsewhere = tmp_path / "elsewhere"
    _folder(elsewhere, OLD)
    _artifact(elsewhere, OLD_SHA)
    mine = [
        root / "python-cccccccccccc",
        root / COMPILED / "wasmtime-9.9.9",
        root / COMPILED / CURRENT / "plain" / f"{'c' * 64}.cwasm",
        root / "notes.txt",
        root / "backup" / OLD / MODULE,
        root / COMPILED / CURRENT / "plain" / "README",
    ]
    _artifact(root, NEW_SHA, age=0)  # makes compiled/<current>/plain
    mine[0].symlink_to(elsewhere / OLD)
    mine[1].symlink_to(elsewhere / COMPILED / CURRENT)
    mine[2].symlink_to(elsewhere / COMPILED / CURRENT / "plain" / f"{OLD_SHA}.cwasm")
    mine[3].write_text("the operator's\n")
    mine[4].parent.mkdir(parents=True)
    mine[4].write_bytes(b"\0asm")
    mine[5].write_text("the operator's\n")
    for path in mine:
        _age(path, 30 * DAY)
    _age(mine[4].parent, 30 * DAY)

    assert _prune(slots, now=time.time() + 60 * DAY) == []
    assert all(p.is_symlink() or p.is_file() for p in mine)
    assert (elsewhere / OLD / MODULE).is_file()
    assert (elsewhere / COMPILED / CURRENT / "plain" / f"{OLD_SHA}.cwasm").is_file()


def test_a_replica_with_another_config_keeps_what_it_uses(
        slots: Path, tmp_path: Path) -> None:
    """The other replica (still on the old config) marks what it uses when it publishes
    it, finds it published, and at every pass; this replica's pass then keeps it."""
    root = slots / "runtimes"
    interp = tmp_path / "interp.wasm"
    interp.write_bytes(b"\0asm\x01\0\0\0")
    sha = hashlib.sha256(interp.read_bytes()).hexdigest()
    cache = CompileCache(tmp_path / "cache")
    for fuel in (False, True):
        cache.path(sha, fuel=fuel).parent.mkdir(parents=True, exist_ok=True)
        cache.path(sha, fuel=fuel).write_bytes(b"compiled")

    folder = publish_files(root, name="python", module=interp, module_sha256=sha, mounts=[],
                           fsync=False)
    artifacts = [artifact_path(root / COMPILED, sha, fuel=fuel) for fuel in (False, True)]
    assert publish_artifact(root, cache, sha, fuel=False, fsync=False)
    for path in (root / folder, *artifacts[:1]):
        _age(path, 2 * DAY)
    # the old replica restarts: publishing finds both there
    assert publish_files(root, name="python", module=interp, module_sha256=sha, mounts=[],
                         fsync=False) == folder
    assert publish_artifact(root, cache, sha, fuel=False, fsync=False)
    # a hard link to a compile of two days ago is as new as its publication
    _age(cache.path(sha, fuel=True), 2 * DAY)
    assert publish_artifact(root, cache, sha, fuel=True, fsync=False)
    assert _prune(slots) == []

    for path in (root / folder, *artifacts):
        _age(path, 2 * DAY)
    touch(root, InUse(folders=frozenset({folder}), artifacts=frozenset({sha})))  # its pass
    assert _prune(slots) == []
    assert (root / folder / MODULE).is_file() and all(p.is_file() for p in artifacts)


def test_an_entry_touched_while_it_is_removed_is_put_back(
        slots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other replica marks the entry used between this pass's look and its rename."""
    root = slots / "runtimes"
    old = _folder(root, OLD)
    real = os.rename
    touched: list[str] = []

    def rename(src: str | Path, dst: str | Path) -> None:
        if not touched:
            touched.append(str(src))
            os.utime(src)
        real(src, dst)

    monkeypatch.setattr(prune_module.os, "rename", rename)
    assert _prune(slots) == []
    assert touched == [str(old)]
    assert (old / MODULE).is_file()
    assert sorted(os.listdir(root)) == [OLD]


def test_an_entry_the_other_replica_removed_first_is_skipped(
        slots: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = slots / "runtimes"
    old = _folder(root, OLD)
    artifact = _artifact(root, OLD_SHA)
    real = os.rename

    def rename(src: str | Path, dst: str | Path) -> None:
        other = Path(src).with_name(f".{Path(src).name}.00000000.removing")
        real(src, other)  # the other replica's pass renamed it aside first
        real(src, dst)

    monkeypatch.setattr(prune_module.os, "rename", rename)
    assert _prune(slots) == []
    assert not old.exists() and not artifact.exists()


def test_leftovers_of_an_interrupted_publication_or_removal_go(slots: Path) -> None:
    root = slots / "runtimes"
    tmp = _folder(root, f".{OLD}.1234abcd.tmp")
    half = _artifact(root, NEW_SHA, size=100, age=0).with_name(f".{NEW_SHA}.cwasm.5678abcd.tmp")
    half.write_bytes(b"h" * 100)
    aside = _folder(root, f".{OLD}.9abcdef0.removing")
    # just made: a publication or a removal may be under way
    assert _prune(slots) == []
    assert tmp.is_dir() and half.is_file() and aside.is_dir()
    later = time.time() + DAY + 60
    assert sorted((r.path, r.kind, r.bytes) for r in _prune(slots, now=later)) == [
        (tmp.name, "temporary", 1234),
        (aside.name, "temporary", 1234),
        (half.relative_to(root).as_posix(), "temporary", 100),
    ]


def test_nothing_is_removed_when_a_job_document_cannot_be_read(slots: Path) -> None:
    root = slots / "runtimes"
    old = _folder(root, OLD)
    _job(slots, runtime_dir=OLD, sha256=OLD_SHA).write_text("{not json")
    with pytest.raises(ValueError, match=r"job\.json"):
        _prune(slots)
    assert old.is_dir()


def test_only_worker_slots_are_read(slots: Path) -> None:
    """Folders not named as poold names its workers are not slots (an ext4 volume's
    ``lost+found``, say): what is in them neither keeps an entry nor stops a pass."""
    root = slots / "runtimes"
    _folder(root, OLD)
    for name in ("lost+found", "backup"):
        (slots / name / "in").mkdir(parents=True)
    (slots / "lost+found" / "in" / "job.json").write_text("{not json")
    _job(slots, runtime_dir=OLD, sha256=OLD_SHA).rename(slots / "backup" / "in" / "job.json")
    assert [r.path for r in _prune(slots)] == [OLD]


def test_a_published_folder_poold_cannot_mark_is_still_used(
        slots: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Published by poold under another uid (its image changed): setting its mtime
    fails with EPERM, and the runtime is published all the same, as before pruning."""
    root = slots / "runtimes"
    interp = tmp_path / "interp.wasm"
    interp.write_bytes(b"\0asm\x01\0\0\0")
    sha = hashlib.sha256(interp.read_bytes()).hexdigest()
    folder = publish_files(root, name="python", module=interp, module_sha256=sha, mounts=[],
                           fsync=False)

    def utime(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(shared_module.os, "utime", utime)
    assert publish_files(root, name="python", module=interp, module_sha256=sha, mounts=[],
                         fsync=False) == folder
    touch(root, InUse(folders=frozenset({folder})))  # a pass goes on too
