"""Configuration: the shipped file loads and documents every key; a bad value stops
start-up with a ConfigError that names the key; POOLD_... variables override."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from poold.config import (
    ConfigError,
    InterpreterSettings,
    Settings,
    load_settings,
    memory_overcommit,
)

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "config" / "local.toml"
GOOD_SHA = hashlib.sha256(b"a token").hexdigest()


def write(tmp_path: Path, text: str, name: str = "poold.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path: Path | None, *words: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ=environ or {})
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    return message


# -- the shipped file ----------------------------------------------------------------


def test_local_toml_loads() -> None:
    settings = load_settings(LOCAL, environ={})
    assert isinstance(settings, Settings)
    assert settings.pool.backend == "local"
    assert settings.kafka.bootstrap == "embedded"
    assert "demo" in settings.tenants


# aiohttp's client keeps an idle connection for 15 s (TCPConnector's keepalive_timeout).
AIOHTTP_CLIENT_KEEPALIVE_S = 15.0


@pytest.mark.parametrize("path", [None, LOCAL, REPO / "config" / "cluster.toml"],
                         ids=["default", "local.toml", "cluster.toml"])
def test_idle_connections_outlive_the_clients_keepalive(path: Path | None) -> None:
    """poold closes idle keep-alive connections at server.idle_timeout_s. Below a
    client's own keep-alive, a request the client sends on a connection it still deems
    alive is reset (the soak's POSTs were, under load), and a reset POST leaves the
    client not knowing whether its job was accepted."""
    settings = Settings() if path is None else load_settings(path, environ={})
    assert settings.server.idle_timeout_s > AIOHTTP_CLIENT_KEEPALIVE_S


def _comment_block_above(lines: list[str], i: int) -> str:
    """The comment lines directly above line ``i``."""
    block: list[str] = []
    while i > 0 and lines[i - 1].strip().startswith("#"):
        i -= 1
        block.insert(0, lines[i])
    return "\n".join(block)


def test_local_toml_documents_every_key() -> None:
    """Each `key = value` has a comment on its line or on the line above. The first key
    of a table may instead be described, by name, in the comment above the table."""
    lines = LOCAL.read_text().splitlines()
    undocumented = []
    keys = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", stripped)
        if not match:
            continue
        keys += 1
        value = re.sub(r'"[^"]*"', '""', stripped)  # a '#' inside a string is not a comment
        same_line = "#" in value
        line_above = _comment_block_above(lines, i) != ""
        above_table = (i > 0 and lines[i - 1].strip().startswith("[")
                       and match.group(1) in _comment_block_above(lines, i - 1))
        if not (same_line or line_above or above_table):
            undocumented.append(f"line {i + 1}: {stripped}")
    assert keys > 20
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)


def test_config_files_cover_every_setting() -> None:
    """Every key of Settings appears in its table, set or commented out, in a
    config/*.toml file: that is where operators look keys up."""
    present: set[str] = set()
    for path in sorted((REPO / "config").glob("*.toml")):
        table = ""
        for line in path.read_text().splitlines():
            if header := re.match(r"^#?\s*\[([A-Za-z0-9_.]+)\]", line.strip()):
                table = header.group(1)
            elif key := re.match(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", line.strip()):
                present.add(f"{table}.{key.group(1)}")
    wanted = [
        f"{section}.{key}"
        for section, field in Settings.model_fields.items()
        if section not in ("tenants", "runtimes")
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    ]
    wanted += [f"runtimes.python.{key}" for key in InterpreterSettings.model_fields]
    missing = [key for key in wanted if key not in present]
    assert not missing, f"settings no config/*.toml file shows: {missing}"


# -- bad files -----------------------------------------------------------------------


def test_unknown_key(tmp_path: Path) -> None:
    message = refused(write(tmp_path, "[pool]\nmin_idl = 3\n"), "pool.min_idl", "unknown key")
    assert "poold.toml" in message


def test_unknown_section(tmp_path: Path) -> None:
    refused(write(tmp_path, "[poool]\nmin_idle = 3\n"), "poool", "unknown key")


def test_wrong_type(tmp_path: Path) -> None:
    refused(write(tmp_path, '[pool]\nmin_idle = "many"\n'), "pool.min_idle")


def test_out_of_range(tmp_path: Path) -> None:
    refused(write(tmp_path, "[server]\nport = 70000\n"), "server.port")


def test_a_runtimes_retention_under_an_hour(tmp_path: Path) -> None:
    """Every replica marks what it uses every 10 min: a shorter retention could prune
    what a replica with another config still uses."""
    refused(write(tmp_path, "[kubernetes]\nruntimes_retention_s = 600\n"),
            "kubernetes.runtimes_retention_s", "3600")
    assert load_settings(None, environ={}).kubernetes.runtimes_retention_s == 86400


def test_bad_choice(tmp_path: Path) -> None:
    refused(write(tmp_path, '[pool]\nbackend = "docker"\n'), "pool.backend")


def test_min_idle_above_max_pods(tmp_path: Path) -> None:
    refused(write(tmp_path, "[pool]\nmin_idle = 9\nmax_pods = 4\n"),
            "pool.min_idle", "pool.max_pods")


def test_min_idle_auto_and_its_floor(tmp_path: Path) -> None:
    pool = load_settings(write(tmp_path, '[pool]\nmin_idle = "auto"\nmin_idle_floor = 2\n'),
                         environ={}).pool
    assert (pool.min_idle, pool.min_idle_floor) == ("auto", 2)
    assert load_settings(None, environ={"POOLD_POOL__MIN_IDLE": "auto"}).pool.min_idle == "auto"
    assert load_settings(None, environ={"POOLD_POOL__MIN_IDLE": "3"}).pool.min_idle == 3
    message = refused(write(tmp_path, '[pool]\nmin_idle = "automatic"\n'), "pool.min_idle")
    assert '"auto"' in message and "literal" not in message, message
    refused(write(tmp_path, "[pool]\nmin_idle = -1\n"), "pool.min_idle")
    refused(write(tmp_path, "[pool]\nmin_idle = true\n"), "pool.min_idle")
    refused(write(tmp_path, '[pool]\nmin_idle = "auto"\nmin_idle_floor = 9\nmax_pods = 4\n'),
            "pool.min_idle_floor", "pool.max_pods")


def test_bad_token_sha256(tmp_path: Path) -> None:
    refused(write(tmp_path, '[tenants.acme]\ntoken_sha256 = "not-a-hash"\n'),
            "tenants.acme.token_sha256")


def test_plain_token_instead_of_its_hash(tmp_path: Path) -> None:
    refused(write(tmp_path, '[tenants.acme]\ntoken_sha256 = "pd_' + "x" * 43 + '"\n'),
            "tenants.acme.token_sha256")


def test_missing_token_sha256(tmp_path: Path) -> None:
    refused(write(tmp_path, "[tenants.acme]\nmax_concurrent_jobs = 2\n"),
            "tenants.acme.token_sha256")


def test_bad_tenant_name(tmp_path: Path) -> None:
    refused(write(tmp_path, f'[tenants."Bad Name"]\ntoken_sha256 = "{GOOD_SHA}"\n'),
            "tenants", "Bad Name")


def test_two_tenants_share_a_token(tmp_path: Path) -> None:
    text = (f'[tenants.a]\ntoken_sha256 = "{GOOD_SHA}"\n'
            f'[tenants.b]\ntoken_sha256 = "{GOOD_SHA}"\n')
    refused(write(tmp_path, text), "token_sha256")


def test_max_concurrent_jobs_above_partitions(tmp_path: Path) -> None:
    text = (f'[kafka]\npartitions = 4\n[tenants.acme]\ntoken_sha256 = "{GOOD_SHA}"\n'
            "max_concurrent_jobs = 5\n")
    refused(write(tmp_path, text), "tenants.acme.max_concurrent_jobs", "kafka.partitions")


def test_default_timeout_above_max(tmp_path: Path) -> None:
    refused(write(tmp_path, "[limits]\ndefault_timeout_s = 100\nmax_timeout_s = 10\n"),
            "limits.default_timeout_s", "limits.max_timeout_s")


def test_invalid_toml(tmp_path: Path) -> None:
    refused(write(tmp_path, "[pool\nmin_idle = \n"), "not valid TOML")


def test_missing_file(tmp_path: Path) -> None:
    refused(tmp_path / "nowhere.toml", "nowhere.toml", "does not exist")


# -- environment overrides -----------------------------------------------------------


def test_env_override_wins_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[pool]\nmin_idle = 1\nmax_pods = 8\n")
    assert load_settings(path, environ={}).pool.min_idle == 1
    settings = load_settings(path, environ={"POOLD_POOL__MIN_IDLE": "3"})
    assert settings.pool.min_idle == 3
    assert settings.pool.max_pods == 8  # the rest of the file still applies


def test_env_override_nested_tenant(tmp_path: Path) -> None:
    settings = load_settings(None, environ={
        "POOLD_TENANTS__ACME__TOKEN_SHA256": GOOD_SHA,
        "POOLD_TENANTS__ACME__MAX_CONCURRENT_JOBS": "2",
    })
    assert settings.tenants["acme"].token_sha256 == GOOD_SHA
    assert settings.tenants["acme"].max_concurrent_jobs == 2


def test_env_override_with_a_bad_value(tmp_path: Path) -> None:
    refused(write(tmp_path, "[pool]\nmin_idle = 1\n"), "pool.min_idle",
            environ={"POOLD_POOL__MIN_IDLE": "lots"})


def test_env_override_with_a_bad_value_names_the_variable(tmp_path: Path) -> None:
    refused(write(tmp_path, "[pool]\nmin_idle = 1\n"), "POOLD_POOL__MIN_IDLE",
            environ={"POOLD_POOL__MIN_IDLE": "lots"})


def test_env_override_with_an_unknown_key() -> None:
    refused(None, "pool.min_idl", environ={"POOLD_POOL__MIN_IDL": "3"})


def test_env_override_consistency_is_checked(tmp_path: Path) -> None:
    refused(write(tmp_path, "[pool]\nmin_idle = 1\nmax_pods = 4\n"),
            "pool.min_idle", "pool.max_pods", environ={"POOLD_POOL__MIN_IDLE": "5"})


def test_client_variables_do_not_disturb_the_daemon() -> None:
    """POOLD_TOKEN and POOLD_URL belong to `poold submit`; `serve` must ignore them."""
    settings = load_settings(LOCAL, environ={"POOLD_TOKEN": "pd_x", "POOLD_URL": "http://x"})
    assert settings.server.port == 8080


# -- the command line ----------------------------------------------------------------


def serve(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `poold serve --config FILE` without any POOLD_ variables of ours."""
    script = Path(sys.executable).parent / "poold"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "poold"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLD_")}
    return subprocess.run([*command, "serve", "--config", str(config)], check=False, env=env,
                          capture_output=True, text=True, timeout=20, cwd=cwd)


@pytest.mark.parametrize(
    ("text", "key"),
    [("[pool]\nmin_idl = 3\n", "pool.min_idl"), ('[pool]\nmin_idle = "many"\n', "pool.min_idle")],
    ids=["unknown-key", "wrong-type"],
)
def test_serve_with_a_bad_config_exits_naming_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    proc = serve(write(tmp_path, text, "bad.toml"), tmp_path)
    assert proc.returncode != 0
    assert key in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / ".poold").exists()  # it stopped before making anything


def test_serve_with_a_missing_config_exits(tmp_path: Path) -> None:
    proc = serve(tmp_path / "absent.toml", tmp_path)
    assert proc.returncode != 0
    assert "absent.toml" in proc.stderr, proc.stderr


def test_overcommitted_worker_memory_is_named() -> None:
    settings = load_settings(None, environ={})
    gib = 2**30
    warning = memory_overcommit(settings, 24 * gib)  # 16 x 4096 MiB on a 24 GiB host
    assert warning is not None
    assert "pool.max_pods" in warning and "limits.max_memory_mb" in warning
    assert memory_overcommit(settings, 128 * gib) is None
    small = load_settings(None, environ={"POOLD_LIMITS__MAX_MEMORY_MB": "1024"})
    assert memory_overcommit(small, 24 * gib) is None
    cluster = load_settings(None, environ={"POOLD_POOL__BACKEND": "kubernetes"})
    assert memory_overcommit(cluster, 1 * gib) is None


def test_admin_token_must_be_no_tenants(tmp_path: Path) -> None:
    text = (f'[server]\nadmin_token_sha256 = "{GOOD_SHA}"\n'
            f'[tenants.demo]\ntoken_sha256 = "{GOOD_SHA}"\n')
    refused(write(tmp_path, text), "server.admin_token_sha256", "tenant")
    refused(write(tmp_path, '[server]\nadmin_token_sha256 = "secret"\n'),
            "server.admin_token_sha256", "sha256")
