"""The agent's settings: what poold's config writes is what the agent reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.agent.settings import AgentConfigError, AgentSettings, agent_env
from poold.config import Settings


def test_what_poold_writes_for_a_worker_the_agent_reads_back(tmp_path: Path) -> None:
    settings = Settings.model_validate({
        "runtime": {"poll_interval_s": 0.05, "max_log_kb": 16, "max_artifacts_mb": 3,
                    "max_artifact_files": 7, "max_output_mb": 5, "max_output_records": 9},
        "slots": {"fsync": False},
        "pool": {"reuse": "tenant", "hot_idle_ttl_s": 0},
    })
    env = agent_env(settings, kafka="k:9092", cache=tmp_path, host="127.0.0.1", port=0)
    env |= {"POOLD_AGENT_SLOT": str(tmp_path / "poold-w-1"), "POOLD_AGENT_TOKEN": "secret"}
    agent = AgentSettings.from_env(env)
    assert (agent.kafka, agent.cache, agent.host, agent.port) == ("k:9092", tmp_path,
                                                                  "127.0.0.1", 0)
    assert agent.poll_interval_s == 0.05
    assert agent.max_log_bytes == 16 * 1024
    assert agent.max_out_bytes == 3 * 1024 * 1024
    assert agent.max_out_files == 7
    assert agent.max_output_bytes == 5 * 1024 * 1024
    assert agent.max_output_records == 9
    assert agent.fsync is False
    assert agent.engine == settings.runtime.engine
    assert agent.linger_s == settings.pool.agent_linger_s == float("inf")


@pytest.mark.parametrize(("change", "named"), [
    ({"POOLD_AGENT_PORT": "http"}, "POOLD_AGENT_PORT"),
    ({"POOLD_AGENT_MAX_LOG_KB": "lots"}, "POOLD_AGENT_MAX_LOG_KB"),
    ({"POOLD_AGENT_FSYNC": "maybe"}, "POOLD_AGENT_FSYNC"),
    ({"POOLD_AGENT_TOKEN": ""}, "POOLD_AGENT_TOKEN"),
])
def test_a_bad_variable_is_named(tmp_path: Path, change: dict[str, str], named: str) -> None:
    env = {"POOLD_AGENT_SLOT": str(tmp_path), "POOLD_AGENT_KAFKA": "k:9092",
           "POOLD_AGENT_CACHE": str(tmp_path), "POOLD_AGENT_TOKEN": "secret"}
    with pytest.raises(AgentConfigError, match=named):
        AgentSettings.from_env(env | change)
