"""Compile bombs cannot hurt poold: a module over a structural limit is refused at
upload, and one within them compiles in a separate, memory- and time-capped
process, so poold's own resident memory stays flat; compilations are taken
round-robin by tenant, and the cache on disk is bounded (least recently used go).

poold runs inside this test process, so "poold's RSS" is this process's: its
peak (VmHWM) is reset before each measurement.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from poold.config import ModuleSettings
from poold.daemon import Daemon
from poold.modules.compiler import Precompiler
from poold.runtime.engine import CompileCache
from tests.modules.helpers import stored, variant
from tests.support.daemon import Client, make_settings, serving
from tests.support.wasm_encode import many_functions
from tests.support.wasm_fixtures import module

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

WASM = {"Content-Type": "application/wasm"}
# compiling 50,000 empty functions in-process raised this process's peak by ~300 MB
# (measured before compilation moved out); a separate process leaves it flat
BIG = 50_000
FLAT_MB = 100


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


def rss_mb() -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1)) / 1024


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    settings = make_settings(tmp_path_factory.mktemp("bomb"), broker, pool__min_idle=0,
                             server__max_upload_mb=8, modules__max_functions=BIG)
    async with serving(settings) as served_:
        yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


async def test_million_function_bomb_is_refused_at_upload(alpha: Client) -> None:
    bomb = many_functions(1_000_000)
    reset_peak_rss()
    before = rss_mb()
    body = await alpha.json("PUT", "/v1/modules", 400, data=io.BytesIO(bomb), headers=WASM)
    grew = peak_rss_mb() - before
    print(f"1,000,000-function bomb ({len(bomb)} bytes): refused; poold peak RSS +{grew:.0f} MB"
          f" (load {os.getloadavg()[0]:.1f})")
    assert "modules.max_functions" in body["error"], body
    assert "1,000,000 functions" in body["error"], body
    assert grew < FLAT_MB, grew
    precompiler = alpha.daemon.modules.precompiler  # type: ignore[union-attr]
    assert precompiler is not None and not precompiler.done


async def test_costly_module_compiles_outside_poold(alpha: Client) -> None:
    """50,000 empty functions are within this daemon's limits: accepted at once, then
    compiled into the cache by another process while poold's peak RSS stays flat."""
    wasm = many_functions(BIG)
    precompiler = alpha.daemon.modules.precompiler  # type: ignore[union-attr]
    assert precompiler is not None
    reset_peak_rss()
    before = rss_mb()
    sha = await alpha.upload(wasm)
    await precompiler.idle(within_s=150)
    grew = peak_rss_mb() - before
    print(f"{BIG}-function module compiled out of process; poold peak RSS +{grew:.0f} MB"
          f" (load {os.getloadavg()[0]:.1f})")
    assert (sha, "plain", "compiled") in precompiler.done, precompiler.done
    assert precompiler.cache.path(sha, fuel=False).exists()
    assert grew < FLAT_MB, grew


# -- the compiler on its own --------------------------------------------------------



async def compile_alone(tmp_path: Path, wasm: bytes, **settings: float) -> str:
    precompiler = Precompiler(cache=CompileCache(tmp_path / "cache"),
                              settings=ModuleSettings(**settings))  # type: ignore[arg-type]
    sha = hashlib.sha256(wasm).hexdigest()
    precompiler.submit(tenant="alpha", sha256=sha, path=stored(tmp_path, wasm))
    await precompiler.start()
    try:
        await precompiler.idle(within_s=120)
    finally:
        await precompiler.stop()
    [(done_sha, _, outcome)] = precompiler.done
    assert done_sha == sha
    assert precompiler.cache.path(sha, fuel=False).exists() == (outcome == "compiled")
    return outcome


async def test_compile_over_its_memory_cap_ends_only_the_compiler(tmp_path: Path) -> None:
    assert await compile_alone(tmp_path, many_functions(BIG), compile_memory_mb=128) == "failed"


async def test_compile_over_its_time_cap_is_stopped(tmp_path: Path) -> None:
    assert await compile_alone(tmp_path, many_functions(BIG), compile_timeout_s=0.5) == "timeout"


async def test_small_module_compiles(tmp_path: Path) -> None:
    assert await compile_alone(tmp_path, module("noop")) == "compiled"


async def test_compiles_are_taken_round_robin_by_tenant(tmp_path: Path) -> None:
    """alpha queues three modules before beta queues one: beta's is compiled second,
    not fourth."""
    precompiler = Precompiler(cache=CompileCache(tmp_path / "cache"), settings=ModuleSettings())
    order = []
    for tenant, tag in (("alpha", "a1"), ("alpha", "a2"), ("alpha", "a3"), ("beta", "b1")):
        wasm, sha = variant(tag)
        precompiler.submit(tenant=tenant, sha256=sha, path=stored(tmp_path, wasm))
        order.append((tag, sha))
    await precompiler.start()
    try:
        await precompiler.idle(within_s=120)
    finally:
        await precompiler.stop()
    names = {sha: tag for tag, sha in order}
    assert [names[sha] for sha, _, _ in precompiler.done] == ["a1", "b1", "a2", "a3"]
    assert {outcome for _, _, outcome in precompiler.done} == {"compiled"}
