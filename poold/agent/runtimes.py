"""Which runtime driver an agent uses (``runtime.engine`` / ``POOLD_AGENT_ENGINE``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from poold.agent.settings import AgentConfigError, AgentSettings
from poold.runtime.engine import CompileCache
from poold.runtime.runner import Runner
from poold.runtime.wasmedge_runner import WasmedgeRunner
from poold.runtime.wasmtime_runner import WasmtimeRunner


def make_runner(settings: AgentSettings, env: Mapping[str, str] | None = None) -> Runner:
    """The driver for ``settings.engine``. ``wasmedge`` runs the WasmEdge CLI
    named by ``POOLD_AGENT_WASMEDGE`` in ``env`` (default: the process
    environment), or ``wasmedge`` on ``PATH``."""
    if settings.engine == "wasmtime":
        return WasmtimeRunner(CompileCache(settings.cache))
    if settings.engine == "wasmedge":
        env = os.environ if env is None else env
        return WasmedgeRunner(env.get("POOLD_AGENT_WASMEDGE") or "wasmedge")
    raise AgentConfigError(
        f"POOLD_AGENT_ENGINE={settings.engine!r} is not supported by this agent; "
        "use wasmtime or wasmedge"
    )
