"""Runtimes: jobs that name an interpreter and send a script (``[runtimes.<name>]``).

The interpreter here is ``tinyinterp.wat`` (tests/fixtures/wasm/src), a WAT stand-in
that prints its script, its stdin and a file of its read-only mount, or tries
something it must not be allowed to do; so these tests run everywhere.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKENS, Client, make_settings, serving, wait_done
from ctl.test_cli import environ, poold  # the CLI as a user runs it
from wasm_fixtures import module

from poold.config import ConfigError, InterpreterSettings, Settings, load_settings
from poold.modules.runtimes import install_runtimes
from poold.modules.store import ModuleStore
from poold.modules.structure import StructureLimits


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


def test_a_missing_interpreter_names_the_key(tmp_path: Path) -> None:
    settings = Settings(runtimes={"py": InterpreterSettings(module=tmp_path / "no.wasm")})
    store = ModuleStore(tmp_path / "m", precompiler=None, max_bytes=1,
                        structure=StructureLimits.from_settings(settings.modules))
    with pytest.raises(ConfigError, match=r"runtimes\.py\.module: .*make runtimes"):
        install_runtimes(settings, store)


def test_a_mount_over_out_is_refused() -> None:
    with pytest.raises(ValueError, match="reserved"):
        InterpreterSettings(module=Path("x.wasm"), mounts={"/out": Path("/tmp")})

