"""A job's files on poold's disk: an artifact name never leads out of the job's artifacts.

The API checks names against the job's listing too (``tests/api/test_artifact_paths.py``);
this is the file store's own check, on its own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from poold.jobs.files import JobFiles
from poold.types import JobId

MINE = JobId("j-" + "1" * 32)
OTHER = JobId("j-" + "2" * 32)


@pytest.fixture
def files(tmp_path: Path) -> JobFiles:
    """Two finished jobs with an artifact each, a log, and a queued job's saved input."""
    store = JobFiles(tmp_path / "jobs", fsync=False)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "hello.txt").write_text("hello\n")
    (out / "sub" / "args.txt").write_text("mine\n")
    assert store.collect(MINE, out, limit=1 << 20) == ([("hello.txt", 6), ("sub/args.txt", 5)], [])
    (out / "sub" / "args.txt").write_text("other's secret\n")
    store.collect(OTHER, out, limit=1 << 20)
    store.append_log(MINE, b"my log\n")
    store.save_input(OTHER, [b"queued secret"])
    (tmp_path / "host-secret").write_text("host\n")
    return store


def test_listed_artifacts_are_found(files: JobFiles) -> None:
    found = files.artifact(MINE, "sub/args.txt")
    assert found is not None and found.read_text() == "mine\n"
    assert files.artifact(MINE, "missing.txt") is None
    assert files.artifact(MINE, "sub") is None, "a folder is not an artifact"


@pytest.mark.parametrize("name", [
    "../stderr.log",
    "../../" + MINE + "/stderr.log",
    "../../" + OTHER + "/artifacts/sub/args.txt",
    "../../" + OTHER + "/input.json",
    "sub/../../stderr.log",
    "../../../host-secret",
    "/etc/passwd",
])
def test_a_name_outside_the_artifacts_is_refused(files: JobFiles, name: str) -> None:
    target = (files.artifact_dir(MINE) / name).resolve()
    assert target.is_file(), f"{name} must name a real file for this test to mean anything"
    assert files.artifact(MINE, name) is None


def test_a_symlink_out_of_the_artifacts_is_refused(files: JobFiles, tmp_path: Path) -> None:
    """A link placed in the artifacts (collect never copies one) leads nowhere either."""
    link = files.artifact_dir(MINE) / "link.txt"
    os.symlink(tmp_path / "host-secret", link)
    assert files.artifact(MINE, "link.txt") is None


def test_artifacts_are_kept_up_to_the_limit_exactly(tmp_path: Path) -> None:
    """runtime.max_artifacts_mb: files that fit are kept whole, in name order; the
    first that would pass the limit is left out, and a smaller one after it still fits."""
    store = JobFiles(tmp_path / "jobs", fsync=False)
    out = tmp_path / "out"
    out.mkdir()
    for name, size in (("a", 40), ("b", 60), ("c", 1), ("d", 0)):
        (out / name).write_bytes(b"x" * size)
    over = "over runtime.max_artifacts_mb (100 bytes in all)"
    assert store.collect(MINE, out, limit=100) == ([("a", 40), ("b", 60), ("d", 0)],
                                                   [("c", over)])
    kept, dropped = store.collect(OTHER, out, limit=99)
    assert kept == [("a", 40), ("c", 1), ("d", 0)]
    assert [name for name, _ in dropped] == ["b"]


def test_artifacts_past_the_file_quota_are_listed_as_dropped(tmp_path: Path) -> None:
    store = JobFiles(tmp_path / "jobs", fsync=False)
    out = tmp_path / "out"
    out.mkdir()
    for i in range(5):
        (out / f"f{i}").write_bytes(b"x")
    kept, dropped = store.collect(MINE, out, limit=1 << 20, max_files=3)
    assert [name for name, _ in kept] == ["f0", "f1", "f2"]
    assert dropped == [(f"f{i}", "over runtime.max_artifact_files (3 files)") for i in (3, 4)]


async def test_a_follower_leaving_does_not_cut_off_another(files: JobFiles) -> None:
    """Two readers follow one job's log live (two browser tabs); one leaves, the
    other still gets every new line until the log is closed."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    first = files.follow_log(MINE, ended=never)
    second = files.follow_log(MINE, ended=never)
    assert await anext(first) == b"my log\n"
    assert await anext(second) == b"my log\n"
    await first.aclose()
    files.append_log(MINE, b"more\n")
    assert await asyncio.wait_for(anext(second), 5) == b"more\n"
    files.close_log(MINE, None)
    assert [chunk async for chunk in second] == []
    never.cancel()


def test_collect_takes_regular_files_only_and_follows_no_link(tmp_path: Path) -> None:
    """A module can leave symlinks in /out (to a file or a folder of the host); they
    are skipped, nothing is read through them, and the files after them are kept."""
    store = JobFiles(tmp_path / "jobs", fsync=False)
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("host secret\n")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(host / "secret", out / "a-link-to-a-file")
    os.symlink(host, out / "b-link-to-a-folder")
    (out / "c.txt").write_text("mine\n")
    kept, dropped = store.collect(MINE, out, limit=1 << 20)
    assert kept == [("c.txt", 5)]
    assert [name for name, _ in dropped] == ["a-link-to-a-file", "b-link-to-a-folder"]
    assert all("not a regular file" in reason for _, reason in dropped)
    copied = [p for p in store.artifact_dir(MINE).rglob("*") if p.is_file()]
    assert copied == [store.artifact_dir(MINE) / "c.txt"]


async def test_closing_a_log_whose_slot_is_going_keeps_the_live_log(
    files: JobFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed under its job: its slot (with the complete log) may be removed
    while poold closes the job's log. The live log stays, followers are told the end,
    and nothing is raised (the job must end as 'the worker died', not as a poold
    failure)."""
    final = tmp_path / "slot-stderr.log"
    final.write_bytes(b"my log\nand the rest\n")
    real_copyfile = shutil.copyfile

    def slot_removed_meanwhile(src: Any, dst: Any, **kw: Any) -> Any:
        Path(src).unlink(missing_ok=True)
        return real_copyfile(src, dst, **kw)

    monkeypatch.setattr(shutil, "copyfile", slot_removed_meanwhile)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    follower = files.follow_log(MINE, ended=never)
    assert await anext(follower) == b"my log\n"
    files.close_log(MINE, final)
    assert [chunk async for chunk in follower] == []
    assert files.read_log(MINE) == b"my log\n"
    never.cancel()
