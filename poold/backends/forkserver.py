"""The local backend's fork server: agents start in milliseconds, not seconds.

Importing wasmtime, aiokafka and aiohttp costs about half a second; a fresh
interpreter per worker would spend that on every recycle. This process pays
it once, then forks one child per worker on request. It speaks JSON lines:
commands on stdin (``spawn``, ``kill``), events on stdout (``spawned``,
``exited``); each child announces ``ready`` on the same pipe itself (a line
shorter than PIPE_BUF is written atomically, so lines never interleave).

It has no event loop and no threads, so forking is safe. When poold goes away
(stdin closes) it kills every child. Whatever kills poold, nothing outlives
it: the fork server asks the kernel for SIGKILL when poold dies
(PR_SET_PDEATHSIG), each child asks the same about the fork server, and both
check right after asking that their parent is still the one they expect (it
may have died before the request). The agent also watches its parent while
it runs (``POOLD_AGENT_PARENT_PID``).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import selectors
import signal
import sys
import traceback
from typing import Any

PR_SET_PDEATHSIG = 1


def _emit(fd: int, event: dict[str, Any]) -> None:
    os.write(fd, json.dumps(event).encode() + b"\n")


PARENT_ENV = "POOLD_FORKSERVER_PARENT"
"""The pid of the poold that starts the fork server."""


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies; exit now if it already has.

    The request is tied to the parent *thread* that forked us; poold forks its
    fork server from its event-loop thread, which lives as long as poold does.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _child(pod: str, env: dict[str, str], proto_fd: int, parent: int) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        _die_with_parent(parent)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.update(env)
        # Work from the slot: its path then shows as the process's cwd, so the
        # operator (and the tests) can tell which worker serves which slot.
        os.chdir(env["POOLD_AGENT_SLOT"])
        os.environ["POOLD_AGENT_READY_FD"] = str(proto_fd)
        os.environ["POOLD_AGENT_POD"] = pod
        os.environ["POOLD_AGENT_PARENT_PID"] = str(parent)
        import asyncio  # noqa: PLC0415

        from poold.agent.main import run_agent  # noqa: PLC0415
        from poold.agent.settings import AgentSettings  # noqa: PLC0415

        asyncio.run(run_agent(AgentSettings.from_env()))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def _reap(children: dict[int, str], proto_fd: int) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        pod = children.pop(pid, None)
        if pod is None:
            continue
        event: dict[str, Any] = {"event": "exited", "pod": pod, "pid": pid}
        if os.WIFSIGNALED(status):
            event["signal"] = os.WTERMSIG(status)
        else:
            event["code"] = os.WEXITSTATUS(status)
        _emit(proto_fd, event)


def _warm_up() -> None:
    """Walk the paths every worker takes once here, so each child inherits them
    warm: lazy imports, wasmtime's engines and linkers and first store and
    instance, aiohttp's first request and WebSocket. Nothing may leave a thread
    behind (fork would copy only this one), hence nothing compiled on a
    parallel engine and a closed loop."""
    import asyncio  # noqa: PLC0415

    from aiohttp import ClientSession, web  # noqa: PLC0415

    from poold.runtime.wasmtime_runner import prebuild  # noqa: PLC0415

    prebuild()  # the engines, linkers and first instance every worker inherits

    async def http() -> None:
        async def link(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.send_str("{}")
            await ws.close()
            return ws

        app = web.Application()
        app.router.add_get("/link", link)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with ClientSession() as session, session.ws_connect(
            f"http://127.0.0.1:{port}/link"
        ) as ws:
            await ws.receive()
        await runner.cleanup()

    asyncio.run(http())
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads != 1:
        print(f"poold forkserver: {threads} threads after warm-up; forking anyway",
              file=sys.stderr)


def serve() -> None:
    daemon = os.environ.get(PARENT_ENV)
    if daemon:
        _die_with_parent(int(daemon))
    # Our stdout is the protocol pipe; move it aside so nothing printed by
    # this process or its children can corrupt it.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    os.set_inheritable(proto_fd, True)

    # Pay the imports once, before any fork.
    import aiohttp  # noqa: F401, PLC0415
    import aiokafka  # noqa: F401, PLC0415
    import wasmtime  # noqa: F401, PLC0415

    import poold.agent.main  # noqa: F401, PLC0415

    _warm_up()

    # Keep the collector away from everything imported so far: a child that
    # scanned those objects would copy every page they live on.
    gc.collect()
    gc.freeze()

    children: dict[int, str] = {}
    pods: dict[str, int] = {}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    server_pid = os.getpid()
    _emit(proto_fd, {"event": "hello", "pid": server_pid})
    buffer = b""
    running = True
    while running:
        for key, _ in selector.select():
            if key.data == "signal":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _reap(children, proto_fd)
                for gone in [name for name, pid in pods.items() if pid not in children]:
                    del pods[gone]
                continue
            data = os.read(sys.stdin.fileno(), 65536)
            if not data:
                running = False
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command = json.loads(line)
                if command["op"] == "spawn":
                    pod = command["pod"]
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        os.close(wake_r)
                        os.close(wake_w)
                        _child(pod, command["env"], proto_fd, server_pid)
                    with contextlib.suppress(OSError):
                        os.setpgid(pid, pid)  # also done by the child: whoever is first
                    children[pid] = pod
                    pods[pod] = pid
                    _emit(proto_fd, {"event": "spawned", "pod": pod, "pid": pid})
                elif command["op"] == "kill":
                    pid = pods.get(command["pod"], 0)
                    if pid and pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, command.get("signal", signal.SIGKILL))
    for pid in list(children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
