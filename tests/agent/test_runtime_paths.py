"""A runtime on the shared volume: the agent finds it under its runtimes folder
(``POOLD_AGENT_RUNTIMES``) and refuses any path of a job document that leads out of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.agent.main import Agent
from poold.agent.settings import AgentSettings
from poold.protocol import JobDocument, PartitionRef, ResultDocument
from poold.slots import Slot, read_json


def _agent(tmp_path: Path, *, runtimes: Path | None) -> Agent:
    slot = Slot(tmp_path / "slot")
    slot.create()
    return Agent(AgentSettings(slot=slot.dir, kafka="127.0.0.1:1", cache=tmp_path / "cache",
                               token="t", fsync=False, runtimes=runtimes))


def _document(*, runtime_dir: str, mounts: list[list[str]]) -> JobDocument:
    return JobDocument(job_id="j-1", sha256="0" * 64, size=100 * 1024 * 1024, args=[], env=[],
                       timeout_s=5, memory_mb=64, fuel=None, input=None,
                       output=PartitionRef("t.out", 0), mounts=mounts, script="main.py",
                       runtime="tiny", runtime_dir=runtime_dir)


@pytest.fixture
def runtimes(tmp_path: Path) -> Path:
    root = tmp_path / "runtimes"
    (root / "tiny-0123456789ab" / "mounts" / "0").mkdir(parents=True)
    (root / "secret").mkdir()
    (tmp_path / "host").mkdir()
    (root / "tiny-0123456789ab" / "mounts" / "escape").symlink_to(tmp_path / "host")
    return root


async def _result(agent: Agent, doc: JobDocument) -> ResultDocument:
    await agent._serve_one(doc)
    return ResultDocument.from_json(read_json(agent.slot.result_json))


@pytest.mark.parametrize(("runtime_dir", "mounts", "said"), [
    ("..", [], "outside this worker's runtimes folder"),
    ("../host", [], "outside this worker's runtimes folder"),
    ("/etc", [], "outside this worker's runtimes folder"),
    ("tiny-0123456789ab", [["../secret", "/lib"]], "not inside its runtime's folder"),
    ("tiny-0123456789ab", [["/etc", "/lib"]], "not inside its runtime's folder"),
    ("tiny-0123456789ab", [["mounts/escape", "/lib"]], "not inside its runtime's folder"),
    ("tiny-0123456789ab", [[".", "/lib"]], "not inside its runtime's folder"),
    ("tiny-fedcba987654", [], "are not at"),
])
async def test_a_path_that_leaves_the_runtimes_folder_is_refused(
        tmp_path: Path, runtimes: Path, runtime_dir: str, mounts: list[list[str]],
        said: str) -> None:
    agent = _agent(tmp_path, runtimes=runtimes)
    result = await _result(agent, _document(runtime_dir=runtime_dir, mounts=mounts))
    assert result.state == "error"
    assert result.error is not None and said in result.error, result.error
    assert result.started_at is None  # nothing ran


async def test_a_worker_without_a_runtimes_folder_says_what_is_missing(
        tmp_path: Path) -> None:
    agent = _agent(tmp_path, runtimes=None)
    result = await _result(agent, _document(runtime_dir="tiny-0123456789ab", mounts=[]))
    assert result.state == "error"
    assert result.error is not None and "POOLD_AGENT_RUNTIMES" in result.error
