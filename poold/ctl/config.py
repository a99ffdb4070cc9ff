"""``poold config``: named contexts (url + token), like ``kubectl config``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from poold.client.contexts import ClientConfig, Context, check_url, config_path
from poold.ctl.common import EXIT_CONFIG, exit_codes, fail
from poold.ctl.render import Column, emit, output_option, text

CONTEXT_COLUMNS = [
    Column("CURRENT", lambda r: "*" if r.get("current") else ""),
    Column("NAME", lambda r: text(r.get("name"))),
    Column("URL", lambda r: text(r.get("url")), shrink=True),
    Column("TOKEN", lambda r: text(r.get("token")), shrink=True),
]


def _complete_contexts(ctx: click.Context, param: click.Parameter, incomplete: str
                       ) -> list[str]:
    try:
        names = ClientConfig.load().contexts
    except Exception:  # completion must never fail the shell
        return []
    return [n for n in names if n.startswith(incomplete)]


@click.group()
def config() -> None:
    """Contexts: which poold to talk to, with which token (in ~/.config/poold/config.toml,
    or $POOLD_CLIENT_CONFIG). The file is kept mode 0600; tokens are never printed."""


@config.command("get-contexts")
@output_option
def get_contexts(fmt: str) -> None:
    """The contexts, the current one marked (tokens shown only as set / a file)."""
    with exit_codes(None):
        cfg = ClientConfig.load()
    rows = [{"name": c.name, "url": c.url, "token": c.describe_token(),
             "current": c.name == cfg.current} for c in cfg.contexts.values()]
    emit(rows, fmt=fmt, columns=CONTEXT_COLUMNS)


@config.command("current-context")
def current_context() -> None:
    """The current context's name."""
    with exit_codes(None):
        cfg = ClientConfig.load()
    if cfg.current is None:
        fail(f"no current context in {cfg.path}; choose one with "
             "`poold config use-context NAME`", EXIT_CONFIG)
    click.echo(cfg.current)


@config.command("use-context")
@click.argument("name", shell_complete=_complete_contexts)
def use_context(name: str) -> None:
    """Make NAME the current context."""
    with exit_codes(None):
        cfg = ClientConfig.load()
        if name not in cfg.contexts:
            known = ", ".join(sorted(cfg.contexts)) or "none"
            fail(f"no context named {name!r} in {cfg.path} (known: {known})", EXIT_CONFIG)
        ClientConfig(path=cfg.path, current=name, contexts=cfg.contexts).save()
    click.echo(f"Switched to context {name!r}.")


@config.command("set-context")
@click.argument("name", shell_complete=_complete_contexts)
@click.option("--url", default=None, help="poold's URL (http:// or https://).")
@click.option("--token", default=None,
              help="The bearer token (it lands in your shell history: prefer --token-stdin "
              "or --token-file).")
@click.option("--token-stdin", is_flag=True, help="Read the token from stdin.")
@click.option("--token-file", default=None,
              help="A file holding the token (mode 0600; relative paths are relative to the "
              "config file's folder).")
@click.option("--use", "use", is_flag=True, help="Also make it the current context.")
def set_context(name: str, url: str | None, token: str | None, token_stdin: bool,
                token_file: str | None, use: bool) -> None:
    """Create or change the context NAME (fields not given are kept)."""
    if sum((token is not None, token_file is not None, token_stdin)) > 1:
        raise click.UsageError("give at most one of --token, --token-stdin, --token-file")
    if token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise click.UsageError("--token-stdin: stdin held no token")
    if token_file is not None:
        token_file = str(Path(token_file).expanduser().absolute())
    with exit_codes(None):
        if url is not None:
            check_url(url, where="--url")
        cfg = ClientConfig.load()
        existed = name in cfg.contexts
        old = cfg.contexts.get(name, Context(name=name))
        new = Context(
            name=name, url=url or old.url,
            token=token if token is not None else (None if token_file else old.token),
            token_file=token_file if token_file is not None else (
                None if token is not None else old.token_file),
        )
        cfg = cfg.with_context(new)
        made_current = use or cfg.current is None
        if made_current:
            cfg = ClientConfig(path=cfg.path, current=name, contexts=cfg.contexts)
        cfg.save()
    verb = "changed" if existed else "added"
    click.echo(f"Context {name!r} {verb} in {cfg.path}"
               + (" (now the current context)." if made_current else "."))


@config.command("delete-context")
@click.argument("name", shell_complete=_complete_contexts)
def delete_context(name: str) -> None:
    """Remove the context NAME."""
    with exit_codes(None):
        cfg = ClientConfig.load()
        if name not in cfg.contexts:
            fail(f"no context named {name!r} in {cfg.path}", EXIT_CONFIG)
        cfg.without_context(name).save()
    click.echo(f"Deleted context {name!r}.")


@config.command("path")
def path() -> None:
    """Where the client config is read from."""
    click.echo(str(config_path()))
