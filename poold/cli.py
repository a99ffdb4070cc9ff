"""``poold serve | agent | submit | token``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
from pathlib import Path
from typing import TextIO

import click

from poold.config import ConfigError, load_settings
from poold.logs import configure


@click.group()
def main() -> None:
    """poold: a warm-pool scheduler for WebAssembly (WASI) jobs."""


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML configuration file (see config/local.toml).")
@click.option("--log-level", default="info", show_default=True)
def serve(config_path: Path | None, log_level: str) -> None:
    """Run the daemon."""
    configure(level=log_level)
    from poold.daemon import serve as run  # noqa: PLC0415 - keep `poold submit` light

    try:
        settings = load_settings(config_path)
        asyncio.run(run(settings))
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


@main.command()
def agent() -> None:
    """Run the agent (inside a runner pod, or as a local worker)."""
    configure(level=os.environ.get("POOLD_AGENT_LOG_LEVEL", "warning"))
    from poold.agent.main import run_agent  # noqa: PLC0415
    from poold.agent.settings import AgentConfigError, AgentSettings  # noqa: PLC0415

    try:
        settings = AgentSettings.from_env()
    except AgentConfigError as e:
        raise click.ClickException(str(e)) from e
    asyncio.run(run_agent(settings))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the benchmarks (bench/scenarios) from a checkout; same as `make bench`."""
    import subprocess  # noqa: PLC0415

    root = Path.cwd()
    if not (root / "bench" / "__main__.py").is_file():
        raise click.ClickException(
            "run `poold bench` from the root of a poold checkout (it needs bench/)"
        )
    sys.exit(subprocess.call([sys.executable, "-m", "bench", *args], cwd=root))


@main.command()
def token() -> None:
    """Make a new bearer token and print it with the sha256 for [tenants.NAME]."""
    value = "pd_" + secrets.token_urlsafe(32)
    click.echo(f"token        = {value}")
    click.echo(f"token_sha256 = \"{hashlib.sha256(value.encode()).hexdigest()}\"")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("module", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--input", "input_path", type=click.File("r"), default=None,
              help="File whose lines become the job's input records ('-' for stdin).")
@click.option("--url", envvar="POOLD_URL", default="http://127.0.0.1:8080", show_default=True)
@click.option("--token", "bearer", envvar="POOLD_TOKEN", required=True,
              help="Bearer token (or set POOLD_TOKEN).")
@click.option("--env", "env", multiple=True, help="KEY=VALUE for the module (repeatable).")
@click.option("--timeout", "timeout_s", type=float, default=None, help="limits.timeout_s")
@click.option("--memory", "memory_mb", type=int, default=None, help="limits.memory_mb")
@click.option("--fuel", type=int, default=None, help="limits.fuel")
def submit(
    module: Path,
    args: tuple[str, ...],
    input_path: TextIO | None,
    url: str,
    bearer: str,
    env: tuple[str, ...],
    timeout_s: float | None,
    memory_mb: int | None,
    fuel: int | None,
) -> None:
    """Upload MODULE, run it with ARGS (after --), print its output, exit with its code."""
    from poold.client import SubmitOptions, run_submit  # noqa: PLC0415

    pairs = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--env")
        pairs[key] = value
    records: list[str] = (
        [line.rstrip("\n") for line in input_path] if input_path is not None else []
    )
    limits = {k: v for k, v in
              {"timeout_s": timeout_s, "memory_mb": memory_mb, "fuel": fuel}.items()
              if v is not None}
    options = SubmitOptions(url=url.rstrip("/"), token=bearer, module=module, args=list(args),
                            env=pairs, input=records, limits=limits)
    code = asyncio.run(run_submit(options))
    sys.exit(code)

