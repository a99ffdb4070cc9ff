"""Publishing the operator's runtimes to the shared volume for runner pods: all of a
version or nothing, once, and a new folder when anything in it changes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from poold.modules import shared
from poold.modules.shared import MODULE, publish_artifact, publish_files
from poold.runtime.engine import CompileCache, artifact_path
from tests.support.wasm_fixtures import module


@pytest.fixture
def runtime(tmp_path: Path) -> tuple[Path, str, list[Path]]:
    wasm = module("tinyinterp")
    interp = tmp_path / "interp.wasm"
    interp.write_bytes(wasm)
    lib = tmp_path / "lib"
    (lib / "pkg").mkdir(parents=True)
    (lib / "data.txt").write_text("from the mount\n")
    (lib / "pkg" / "mod.py").write_text("x = 1\n")
    (lib / "outside").symlink_to(tmp_path)  # never followed into the copy
    other = tmp_path / "other"
    other.mkdir()
    (other / "b.txt").write_text("b\n")
    return interp, hashlib.sha256(wasm).hexdigest(), [lib, other]


def test_a_runtime_is_published_whole_in_a_folder_named_by_its_content(
        tmp_path: Path, runtime: tuple[Path, str, list[Path]]) -> None:
    interp, sha, mounts = runtime
    root = tmp_path / "slots" / "runtimes"
    folder = publish_files(root, name="tiny", module=interp, module_sha256=sha, mounts=mounts,
                           fsync=True)
    assert folder.startswith("tiny-") and len(folder) == len("tiny-") + 12
    assert os.listdir(root) == [folder]  # no temporary folder left behind
    published = root / folder
    assert (published / MODULE).read_bytes() == interp.read_bytes()
    assert (published / "mounts/0/data.txt").read_text() == "from the mount\n"
    assert (published / "mounts/0/pkg/mod.py").read_text() == "x = 1\n"
    assert not (published / "mounts/0/outside").exists()
    assert (published / "mounts/1/b.txt").read_text() == "b\n"
    assert (published / "mounts/0/data.txt").stat().st_mode & 0o777 == 0o644


def test_publishing_again_copies_nothing(
        tmp_path: Path, runtime: tuple[Path, str, list[Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    interp, sha, mounts = runtime
    root = tmp_path / "runtimes"
    first = publish_files(root, name="tiny", module=interp, module_sha256=sha, mounts=mounts,
                          fsync=False)
    copies: list[Path] = []
    monkeypatch.setattr(shared, "_copy_file", lambda src, dst, fsync: copies.append(src))
    again = publish_files(root, name="tiny", module=interp, module_sha256=sha, mounts=mounts,
                          fsync=False)
    assert again == first
    assert copies == []


def test_a_changed_mount_gets_a_folder_of_its_own(
        tmp_path: Path, runtime: tuple[Path, str, list[Path]]) -> None:
    interp, sha, mounts = runtime
    root = tmp_path / "runtimes"
    first = publish_files(root, name="tiny", module=interp, module_sha256=sha, mounts=mounts,
                          fsync=False)
    (mounts[0] / "pkg" / "mod.py").write_text("x = 2\n")
    second = publish_files(root, name="tiny", module=interp, module_sha256=sha, mounts=mounts,
                           fsync=False)
    assert second != first
    assert sorted(os.listdir(root)) == sorted([first, second])
    assert (root / first / "mounts/0/pkg/mod.py").read_text() == "x = 1\n"  # left as it was
    assert (root / second / "mounts/0/pkg/mod.py").read_text() == "x = 2\n"


def test_a_failed_copy_leaves_nothing_a_pod_could_see(
        tmp_path: Path, runtime: tuple[Path, str, list[Path]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    interp, sha, mounts = runtime
    root = tmp_path / "runtimes"

    def full(src: Path, dst: Path, *, fsync: bool) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shared, "_copy_file", full)
    with pytest.raises(OSError, match="No space left"):
        publish_files(root, name="tiny", module=interp, module_sha256=sha, mounts=mounts,
                      fsync=False)
    assert os.listdir(root) == []


def test_the_compiled_interpreter_is_published_in_the_cache_layout(
        tmp_path: Path, runtime: tuple[Path, str, list[Path]]) -> None:
    interp, sha, _ = runtime
    root = tmp_path / "runtimes"
    cache = CompileCache(tmp_path / "cache")
    assert publish_artifact(root, cache, sha, fuel=False, fsync=False) is False  # not yet
    assert not (root / "compiled").exists() or not list((root / "compiled").rglob("*.cwasm"))
    cache.precompile(sha, interp)
    assert publish_artifact(root, cache, sha, fuel=False, fsync=True) is True
    published = artifact_path(root / "compiled", sha, fuel=False)
    assert published.read_bytes() == cache.path(sha, fuel=False).read_bytes()
    assert [p.name for p in published.parent.iterdir()] == [published.name]  # no temp file
    assert publish_artifact(root, cache, sha, fuel=True, fsync=False) is False


def test_what_is_published_is_readable_whatever_poolds_umask(
        tmp_path: Path, runtime: tuple[Path, str, list[Path]]) -> None:
    """Runner pods may run as another user than poold."""
    interp, sha, mounts = runtime
    root = tmp_path / "runtimes"
    cache = CompileCache(tmp_path / "cache")
    cache.precompile(sha, interp)
    old = os.umask(0o077)
    try:
        folder = publish_files(root, name="tiny", module=interp, module_sha256=sha,
                               mounts=mounts, fsync=False)
        publish_artifact(root, cache, sha, fuel=False, fsync=False)
    finally:
        os.umask(old)
    for path in [root, *root.rglob("*")]:
        want = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == want, path
    assert (root / folder).is_dir()
