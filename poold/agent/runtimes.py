"""Which runtime driver an agent uses (``runtime.engine`` / ``POOLD_AGENT_ENGINE``)."""

from __future__ import annotations

from poold.agent.settings import AgentConfigError, AgentSettings
from poold.runtime.engine import CompileCache
from poold.runtime.runner import Runner
from poold.runtime.wasmtime_runner import WasmtimeRunner


def make_runner(settings: AgentSettings) -> Runner:
    if settings.engine == "wasmtime":
        return WasmtimeRunner(CompileCache(settings.cache))
    raise AgentConfigError(
        f"POOLD_AGENT_ENGINE={settings.engine!r} is not supported by this agent; "
        "use wasmtime"
    )
