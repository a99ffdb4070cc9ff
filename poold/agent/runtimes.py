"""Which runtime driver an agent uses (``runtime.engine`` / ``POOLD_AGENT_ENGINE``),
and the one an operator's runtime (``[runtimes.<name>]``) always runs on: wasmtime,
whatever the worker's engine, because only it mounts folders read-only and runs a
compiled interpreter (WasmEdge's CLI has no read-only ``--dir`` and interprets)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from poold.agent.settings import AgentConfigError, AgentSettings
from poold.runtime.engine import CompileCache
from poold.runtime.runner import Runner
from poold.runtime.wasmedge_runner import WasmedgeRunner
from poold.runtime.wasmtime_runner import WasmtimeRunner

SHARED_COMPILED = "compiled"
"""Under the runtimes folder: the compiled interpreters poold publishes, in the
compile cache's layout (``wasmtime-<version>/<flavour>/<sha256>.cwasm``)."""


def wasmtime_runner(settings: AgentSettings) -> WasmtimeRunner:
    """The wasmtime driver over this worker's own compile cache and, in a runner pod,
    the compiled runtimes on the shared volume (read-only)."""
    shared = () if settings.runtimes is None else (settings.runtimes / SHARED_COMPILED,)
    return WasmtimeRunner(CompileCache(settings.cache, read_only=shared))


def make_runner(settings: AgentSettings, env: Mapping[str, str] | None = None) -> Runner:
    """The driver for ``settings.engine``. ``wasmedge`` runs the WasmEdge CLI
    named by ``POOLD_AGENT_WASMEDGE`` in ``env`` (default: the process
    environment), or ``wasmedge`` on ``PATH``."""
    if settings.engine == "wasmtime":
        return wasmtime_runner(settings)
    if settings.engine == "wasmedge":
        env = os.environ if env is None else env
        return WasmedgeRunner(env.get("POOLD_AGENT_WASMEDGE") or "wasmedge")
    raise AgentConfigError(
        f"POOLD_AGENT_ENGINE={settings.engine!r} is not supported by this agent; "
        "use wasmtime or wasmedge"
    )
