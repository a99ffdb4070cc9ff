"""``poold``: the daemon's commands (``serve``, ``agent``, ``token``, ``bench``) and the
client's (``run``, ``jobs``, ``logs``… from :mod:`poold.ctl`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sys
from pathlib import Path

import click

from poold.ctl import register


@click.group()
def main() -> None:
    """poold: a warm-pool scheduler for WebAssembly (WASI) jobs."""


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML configuration file (see config/local.toml).")
@click.option("--log-level", default="info", show_default=True)
def serve(config_path: Path | None, log_level: str) -> None:
    """Run the daemon."""
    # the daemon's parts are imported here, not above: client commands start faster
    from poold.config import ConfigError, load_settings  # noqa: PLC0415
    from poold.daemon import serve as run  # noqa: PLC0415
    from poold.logs import configure  # noqa: PLC0415

    configure(level=log_level)

    try:
        settings = load_settings(config_path)
        asyncio.run(run(settings, config_path=config_path))
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


@main.command()
def agent() -> None:
    """Run the agent (inside a runner pod, or as a local worker)."""
    from poold.logs import configure  # noqa: PLC0415

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


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script, e.g. `source <(poold completion bash)`."""
    from click.shell_completion import get_completion_class  # noqa: PLC0415

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(main, {}, "poold", "_POOLD_COMPLETE").source())


register(main)
