"""The console's pages as served: where they live, and the headers that keep
them safe (no framing, no sniffing, no referrer, scripts from this server only)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from poold.daemon import Daemon
from tests.support.daemon import make_settings, serving

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    settings = make_settings(tmp_path_factory.mktemp("pages"), broker, pool__min_idle=0)
    async with serving(settings) as served_:
        yield served_


def check_security_headers(headers: Mapping[str, str]) -> None:
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", ["/", "/console"])
async def test_root_redirects_to_the_console(
    served: tuple[Daemon, aiohttp.ClientSession], path: str
) -> None:
    daemon, session = served
    async with session.get(daemon.url + path, allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/console/"


@pytest.mark.parametrize(("name", "content_type"), [
    ("", "text/html"), ("index.html", "text/html"), ("console.js", "text/javascript"),
    ("api.js", "text/javascript"), ("chart.js", "text/javascript"),
    ("console.css", "text/css"), ("favicon.svg", "image/svg+xml"),
])
async def test_console_files_carry_security_headers(
    served: tuple[Daemon, aiohttp.ClientSession], name: str, content_type: str
) -> None:
    daemon, session = served
    async with session.get(f"{daemon.url}/console/{name}") as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith(content_type)
        check_security_headers(r.headers)


async def test_page_has_no_inline_script_and_loads_nothing_from_elsewhere(
    served: tuple[Daemon, aiohttp.ClientSession],
) -> None:
    daemon, session = served
    async with session.get(f"{daemon.url}/console/") as r:
        html = await r.text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts, "the page loads its script"
    assert all(body.strip() == "" for body in scripts), "inline script"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", html), "a resource from elsewhere"


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapi%2Fconsole.py", "__init__.py"])
async def test_unknown_console_file_is_404_with_headers(
    served: tuple[Daemon, aiohttp.ClientSession], name: str
) -> None:
    daemon, session = served
    async with session.get(f"{daemon.url}/console/{name}") as r:
        assert r.status == 404
        assert "error" in await r.json()
        check_security_headers(r.headers)


async def test_every_console_file_is_package_data() -> None:
    """An installed wheel has what the source tree serves: pyproject's package-data
    patterns cover every file under poold/console/static."""
    root = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["poold.console"]
    package = root / "poold" / "console"
    files = [p.relative_to(package).as_posix() for p in (package / "static").rglob("*")
             if p.is_file()]
    assert "static/index.html" in files
    missed = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert not missed, f"not in [tool.setuptools.package-data] poold.console: {missed}"
