"""Named contexts, like kubeconfig: which poold to talk to and with which token.

The file is ``$POOLD_CLIENT_CONFIG``, else ``$XDG_CONFIG_HOME/poold/config.toml``,
else ``~/.config/poold/config.toml``::

    current_context = "local"

    [contexts.local]
    url = "http://127.0.0.1:8080"
    token = "poold-local-demo-token"

    [contexts.prod]
    url = "https://poold.example.org"
    token_file = "prod.token"        # relative to this file's folder

Why ``POOLD_CLIENT_CONFIG`` and not ``POOLD_CONFIG``: ``poold serve --config``
takes the *daemon's* configuration, and ``POOLD_...`` variables are the
daemon's overrides; a variable called ``POOLD_CONFIG`` would read as "the
daemon's config file" to an operator. The client's name says whose it is, and
(having no ``__``) the daemon's override parser ignores it, as it ignores
``POOLD_URL`` and ``POOLD_TOKEN``.

The file holds tokens, so it is written with mode 0600 (its folder 0700) and
refused, like ssh refuses a readable key, when group or others can read it.
The same rule holds for token files.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w

from poold.atomic import write_atomic
from poold.client.errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:8080"
CONFIG_ENV = "POOLD_CLIENT_CONFIG"
URL_ENV = "POOLD_URL"
TOKEN_ENV = "POOLD_TOKEN"  # noqa: S105 - the variable's name, not a token


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else (
        Path.home() / ".config")
    return base / "poold" / "config.toml"


@dataclass(frozen=True)
class Context:
    name: str
    url: str = DEFAULT_URL
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None

    def describe_token(self) -> str:
        """How the token is given, never the token itself."""
        if self.token_file:
            return f"file {self.token_file}"
        return "set" if self.token else "none"


@dataclass(frozen=True)
class ClientConfig:
    path: Path
    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> ClientConfig:
        """The file's contexts, or an empty config if there is no file yet."""
        path = config_path() if path is None else path
        try:
            _check_private(path)
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            return cls(path=path)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from e
        except OSError as e:
            raise ConfigError(f"{path}: cannot read it ({e.strerror})") from e
        unknown = set(data) - {"current_context", "contexts"}
        if unknown:
            raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r} (expected "
                              "current_context and [contexts.NAME] tables)")
        contexts: dict[str, Context] = {}
        raw = data.get("contexts", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: contexts must be a table of [contexts.NAME] tables")
        for name, body in raw.items():
            contexts[name] = _context(path, name, body)
        current = data.get("current_context")
        if current is not None and not isinstance(current, str):
            raise ConfigError(f"{path}: current_context must be a string")
        return cls(path=path, current=current, contexts=contexts)

    def save(self) -> None:
        """Write the file atomically with mode 0600 (its folder 0700 if we create it)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data: dict[str, Any] = {}
        if self.current is not None:
            data["current_context"] = self.current
        data["contexts"] = {
            c.name: {k: v for k, v in (("url", c.url), ("token", c.token),
                                       ("token_file", c.token_file)) if v is not None}
            for c in self.contexts.values()
        }
        write_atomic(self.path, tomli_w.dumps(data).encode(), mode=0o600)

    def with_context(self, context: Context) -> ClientConfig:
        return replace(self, contexts={**self.contexts, context.name: context})

    def without_context(self, name: str) -> ClientConfig:
        contexts = {k: v for k, v in self.contexts.items() if k != name}
        current = None if self.current == name else self.current
        return replace(self, contexts=contexts, current=current)

    def token_of(self, context: Context) -> str | None:
        if context.token_file:
            path = (self.path.parent / Path(context.token_file).expanduser())
            try:
                _check_private(path)
                value = path.read_text().strip()
            except OSError as e:
                raise ConfigError(f"context {context.name!r}: cannot read its token_file "
                                  f"{path} ({e.strerror})") from e
            if not value:
                raise ConfigError(f"context {context.name!r}: its token_file {path} is empty")
            return value
        return context.token


def _context(path: Path, name: str, body: Any) -> Context:
    where = f"{path}: contexts.{name}"
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(body) - {"url", "token", "token_file"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (expected url, token "
                          "or token_file)")
    for key in ("url", "token", "token_file"):
        if key in body and not isinstance(body[key], str):
            raise ConfigError(f"{where}.{key} must be a string")
    if "token" in body and "token_file" in body:
        raise ConfigError(f"{where}: give token or token_file, not both")
    url = body.get("url", DEFAULT_URL)
    check_url(url, where=f"{where}.url")
    return Context(name=name, url=url, token=body.get("token"),
                   token_file=body.get("token_file"))


def check_url(url: str, *, where: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: {url!r} is not an http:// or https:// URL")


def _check_private(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{path} can be read or written by others (mode {stat.S_IMODE(mode):04o}) and "
            f"holds a token; run `chmod 600 {path}` (poold refuses such files, as ssh does)"
        )


@dataclass(frozen=True)
class Target:
    """Where to connect, with the token, and where each came from (for messages)."""

    url: str
    token: str | None = field(repr=False)
    context: str | None
    url_from: str
    token_from: str


def resolve(
    *,
    url: str | None = None,
    token: str | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
    path: Path | None = None,
) -> Target:
    """URL and token: each from its flag, else its variable, else the context, else default.

    The context is the one named by ``context`` (the ``--context`` flag), else
    the file's ``current_context``; a named context that is missing is an error.
    """
    env = os.environ if environ is None else environ
    config = ClientConfig.load(path if path is not None else config_path(env))
    chosen: Context | None = None
    name = context or config.current
    if name is not None:
        chosen = config.contexts.get(name)
        if chosen is None:
            known = ", ".join(sorted(config.contexts)) or "none"
            raise ConfigError(f"no context named {name!r} in {config.path} (known: {known}); "
                              "add it with `poold config set-context`")
    if url is not None:
        final_url, url_from = url, "--url"
    elif env.get(URL_ENV):
        final_url, url_from = env[URL_ENV], URL_ENV
    elif chosen is not None:
        final_url, url_from = chosen.url, f"context {chosen.name}"
    else:
        final_url, url_from = DEFAULT_URL, "default"
    check_url(final_url, where=url_from)
    final_token: str | None
    if token is not None:
        final_token, token_from = token, "--token"
    elif env.get(TOKEN_ENV):
        final_token, token_from = env[TOKEN_ENV], TOKEN_ENV
    elif chosen is not None:
        final_token, token_from = config.token_of(chosen), f"context {chosen.name}"
    else:
        final_token, token_from = None, "none"
    return Target(url=final_url.rstrip("/"), token=final_token,
                  context=chosen.name if chosen else None, url_from=url_from,
                  token_from=token_from)
