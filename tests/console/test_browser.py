"""The console in a real browser: Debian's Chromium driven by Playwright.

Never ``playwright install``: the browser is Debian's ``/usr/bin/chromium``
(``.ci/run`` installs it). Without it these tests skip, except under ``CI``,
where they fail. Each test gets a fresh browser context and checks, at the
end, that the page logged no console error, opened no dialog and sent no
request anywhere but the daemon on 127.0.0.1. Tests wait on what the page
shows (Playwright's ``expect`` polls the DOM), never on sleeps.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import pytest_asyncio

from poold.config import InterpreterSettings
from poold.daemon import Daemon
from poold.runtime.engine import CompileCache
from tests.console.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.compiles import compile_held
from tests.support.daemon import TOKENS, Client, make_settings, serving
from tests.support.wasm_fixtures import module, with_custom_section

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the dev extras bring it
    async_playwright = None  # type: ignore[assignment]

if async_playwright is None or not CHROMIUM.exists():
    reason = ("needs Debian's chromium (/usr/bin/chromium; apt-get install chromium) and the "
              "playwright package (pip install -e '.[dev]')")
    if os.environ.get("CI"):
        raise RuntimeError(f"CI is set, so the browser tests must run: {reason}")
    pytest.skip(reason, allow_module_level=True)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

WAIT_MS = 30_000
expect.set_options(timeout=WAIT_MS)  # its own default is 5 s: too short on a loaded machine


HELD_RUNTIME = with_custom_section(module("tinyreactor"), f"console-{secrets.token_hex(6)}", b"")
RELEASE: list[Callable[[], None]] = []
"""Lets the runtime's compilation go (test_a_job_waiting_for_its_runtime_says_why, early
in the module: while it is held, the uploads' background compiles wait behind it)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(
    tmp_path_factory: pytest.TempPathFactory, broker: str
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    tmp = tmp_path_factory.mktemp("console")
    settings = make_settings(tmp, broker)
    # a runtime whose compilation is held for the whole module: its jobs wait, queued
    (tmp / "tiny.wasm").write_bytes(HELD_RUNTIME)
    settings = settings.model_copy(
        update={"runtimes": {"tiny": InterpreterSettings(module=tmp / "tiny.wasm")}})
    with compile_held(CompileCache(settings.cache_dir), hashlib.sha256(HELD_RUNTIME).hexdigest(),
                      fuel=False) as release:
        RELEASE.append(release)
        async with serving(settings) as served_:
            yield served_


@pytest.fixture(scope="module")
def alpha(served: tuple[Daemon, aiohttp.ClientSession]) -> Client:
    return Client(served[0], served[1], "alpha")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                          headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watched:
    """A page and what it did: console errors, dialogs, every request's URL."""

    page: Page
    base: str
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    expected_errors: list[str] = field(default_factory=list)

    async def sign_in(self, token: str = TOKENS["alpha"]) -> None:
        page = self.page
        await page.goto(self.base + "/")
        await page.get_by_test_id("token-input").fill(token)
        await page.get_by_test_id("sign-in").click()
        await expect(page.get_by_test_id("pool-idle")).to_have_text(re.compile(r"^\d+$"))

    async def upload(self, name: str, wasm: bytes) -> None:
        page = self.page
        await page.get_by_test_id("upload-input").set_input_files(
            files=[{"name": f"{name}.wasm", "mimeType": "application/wasm", "buffer": wasm}])
        sha = hashlib.sha256(wasm).hexdigest()
        await expect(page.locator("#upload-status")).to_contain_text(sha)
        await expect(page.locator("#module-select")).to_have_value(sha)

    async def submit(self, *, args: Sequence[str] = (), input_lines: Sequence[str] = ()) -> str:
        page = self.page
        await page.get_by_test_id("args-input").fill("\n".join(args))
        await page.get_by_test_id("input-text").fill("\n".join(input_lines))
        before = page.url
        await page.get_by_test_id("submit-job").click()
        await page.wait_for_url(lambda url: url != before and "#/job/j-" in url)
        return page.url.rsplit("/", 1)[1]


@pytest_asyncio.fixture(loop_scope="module")
async def watched(
    browser: Browser, served: tuple[Daemon, aiohttp.ClientSession]
) -> AsyncIterator[Watched]:
    daemon, _ = served
    context = await browser.new_context(accept_downloads=True)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    w = Watched(page=page, base=daemon.url)
    host = urlsplit(daemon.url).hostname
    assert host == "127.0.0.1"

    async def refuse(route: Any) -> None:
        w.outside.append(route.request.url)
        await route.abort()

    await context.route(lambda url: urlsplit(url).hostname != host, refuse)
    page.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: w.errors.append(f"uncaught: {e}"))
    page.on("request", lambda r: w.requests.append(r.url))

    async def dialog(d: Any) -> None:
        w.dialogs.append(d.message)
        await d.dismiss()

    page.on("dialog", dialog)
    try:
        yield w
    finally:
        await context.close()
    unexpected = [e for e in w.errors if not any(x in e for x in w.expected_errors)]
    assert not unexpected, f"console errors: {unexpected}"
    assert not w.dialogs, f"dialogs opened: {w.dialogs}"
    assert not w.outside, f"requests that left 127.0.0.1: {w.outside}"
    strays = [u for u in w.requests
              if not (u.startswith(daemon.url + "/") or u.startswith("blob:"))]
    assert not strays, f"requests not to the daemon: {strays}"
    assert not any(TOKENS["alpha"] in u for u in w.requests), "the token went into a URL"


def unique(name: str) -> bytes:
    return with_custom_section(module(name), f"b-{secrets.token_hex(6)}", b"")


# -- sign in -------------------------------------------------------------------------


async def test_wrong_token_shows_error_and_right_one_signs_in(watched: Watched) -> None:
    page = watched.page
    watched.expected_errors.append("status of 401")
    await page.goto(watched.base + "/")
    assert page.url == watched.base + "/console/"
    await page.get_by_test_id("token-input").fill("not-a-token-" + "x" * 20)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("error")).to_be_visible()
    await expect(page.get_by_test_id("error")).to_contain_text("not valid")
    await expect(page.get_by_test_id("pool-idle")).to_be_hidden()
    assert await page.evaluate("sessionStorage.length") == 0

    await watched.sign_in()
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(page.get_by_test_id("pool-busy")).to_have_text(re.compile(r"^\d+$"))
    for figure in ("starting", "target", "max", "hot", "deleting"):
        await expect(page.locator(f"#pool-{figure}")).to_have_text(re.compile(r"^\d+$"))
    assert TOKENS["alpha"] not in await page.content()
    assert await page.evaluate("Object.values(sessionStorage)") == [TOKENS["alpha"]]


async def test_signed_in_tab_survives_a_reload(watched: Watched) -> None:
    await watched.sign_in()
    await watched.page.reload()
    await expect(watched.page.get_by_test_id("pool-idle")).to_have_text(re.compile(r"^\d+$"))


async def test_a_job_waiting_for_its_runtime_says_why(watched: Watched, alpha: Client) -> None:
    """The runtime's compilation is held for this module's daemon (``served``)."""
    page = watched.page
    await watched.sign_in()
    job = await alpha.json("POST", "/v1/jobs", 202, json={"runtime": "tiny", "script": ""})
    await page.goto(f"{watched.base}/console/#/job/{job['id']}")
    await expect(page.get_by_test_id("job-state")).to_have_text("queued")
    waiting = page.get_by_test_id("job-waiting")
    await expect(waiting).to_be_visible()
    await expect(waiting).to_have_text(re.compile(
        r"^waiting for the runtime 'tiny' to finish compiling \(started .*\); "
        r"the job starts when it is done$"))
    row = page.get_by_test_id("jobs-list").locator(f"tr[data-job-id='{job['id']}']")
    await expect(row).to_contain_text("queued (compiling)")
    await page.get_by_test_id("cancel-job").click()
    await expect(page.get_by_test_id("job-state")).to_have_text("cancelled")
    await expect(waiting).to_be_hidden()
    await expect(row).not_to_contain_text("compiling")
    RELEASE.pop()()


# -- upload, submit, watch ------------------------------------------------------------


async def test_upload_and_submit_with_input(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    wasm = unique("upper")
    await watched.upload("upper", wasm)
    job_id = await watched.submit(input_lines=["hello", "world"])
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    await expect(page.get_by_test_id("job-output")).to_have_text("HELLO\nWORLD\n")
    await expect(page.get_by_test_id("job-log")).to_contain_text("processed 2 lines")
    await expect(page.locator("#job-fields")).to_contain_text(re.compile(r"start(hot|warm|cold)"))
    await expect(page.locator("#job-fields")).to_contain_text(re.compile(r"cpu ms\d"))
    row = page.get_by_test_id("jobs-list").locator(f"tr[data-job-id='{job_id}']")
    await expect(row).to_contain_text("succeeded")
    await expect(page.get_by_test_id("modules-list")).to_contain_text(
        hashlib.sha256(wasm).hexdigest()[:12])


async def test_output_appears_while_the_job_runs(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("slowprint", module("slowprint"))
    await watched.submit(args=["8"])
    output = page.get_by_test_id("job-output")
    await expect(output).to_contain_text("before sleep")
    # the first line is on the page; the module is still asleep
    assert "after sleep" not in await output.text_content()
    await expect(page.get_by_test_id("job-state")).to_have_text("running")
    await expect(page.get_by_test_id("job-log")).to_contain_text("slowprint: sleeping")
    await expect(page.get_by_test_id("cancel-job")).to_be_visible()

    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    await expect(output).to_have_text("before sleep\nafter sleep\n")
    await expect(page.get_by_test_id("job-log")).to_contain_text("slowprint: done")
    await expect(page.get_by_test_id("cancel-job")).to_be_hidden()


async def test_artifact_downloads(watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("artifacts", unique("artifacts"))
    await watched.submit(args=["from", "the", "browser"])
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    artifacts = page.get_by_test_id("job-artifacts")
    async with page.expect_download() as info:
        await artifacts.get_by_role("button", name="sub/args.txt").click()
    download = await info.value
    assert download.suggested_filename == "args.txt"
    saved = tmp_path / "args.txt"
    await download.save_as(saved)
    assert saved.read_text() == "from the browser\n"
    async with page.expect_download() as info:
        await artifacts.get_by_role("button", name="hello.txt").click()
    await (await info.value).save_as(tmp_path / "hello.txt")
    assert (tmp_path / "hello.txt").read_text() == "hello from wasm\n"


async def test_cancel_a_long_job(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("slowprint", module("slowprint"))
    await watched.submit(args=["300"])
    await expect(page.get_by_test_id("job-output")).to_contain_text("before sleep")
    await page.get_by_test_id("cancel-job").click()
    await expect(page.get_by_test_id("job-state")).to_have_text("cancelled")
    await expect(page.get_by_test_id("cancel-job")).to_be_hidden()
    assert "after sleep" not in await page.get_by_test_id("job-output").text_content()


async def test_run_again_submits_the_same_job(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("upper", unique("upper"))
    first = await watched.submit(args=["x"], input_lines=["again"])
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    await page.reload()  # the tab keeps what it submitted
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    await page.get_by_test_id("run-again").click()
    await page.wait_for_url(lambda url: "#/job/j-" in url and not url.endswith(first))
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    await expect(page.get_by_test_id("job-output")).to_have_text("AGAIN\n")
    await expect(page.locator("#job-fields")).to_contain_text('["x"]')


async def test_run_again_asks_for_an_input_it_never_saw(watched: Watched, alpha: Client) -> None:
    """A job submitted elsewhere: its input is not in the API, so the form is filled in
    with everything else and the page says what is missing."""
    page = watched.page
    job = await alpha.submit(await alpha.upload(unique("upper")), args=["a b"],
                             env={"K": "v"}, input=["one", "two"], limits={"timeout_s": 9})
    await watched.sign_in()
    await page.goto(f"{watched.base}/console/#/job/{job['id']}")
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    await page.get_by_test_id("run-again").click()
    await expect(page.get_by_test_id("error")).to_contain_text("2 input records")
    await expect(page.get_by_test_id("args-input")).to_have_value("a b")
    await expect(page.locator("#env")).to_have_value("K=v")
    await expect(page.locator("#limit-timeout")).to_have_value("9")
    await expect(page.locator("#module-select")).to_have_value(job["module"])
    assert page.url.endswith(job["id"]), "nothing was submitted"


async def test_refused_upload_shows_the_servers_reason(watched: Watched) -> None:
    page = watched.page
    watched.expected_errors.append("status of 400")
    await watched.sign_in()
    await page.get_by_test_id("upload-input").set_input_files(
        files=[{"name": "notes.wasm", "mimeType": "application/wasm", "buffer": b"hello"}])
    await expect(page.get_by_test_id("error")).to_contain_text("not a WebAssembly")


# -- untrusted text -------------------------------------------------------------------

XSS = ["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", "<b>bold</b>"]


async def test_printed_markup_is_shown_as_text(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("echoenv", unique("echoenv"))
    await watched.submit(args=XSS)
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    output = page.get_by_test_id("job-output")
    for text in XSS:
        await expect(output).to_contain_text(f"arg: {text}")
    assert await page.locator("img, b, #job-output script").count() == 0
    fields = page.locator("#job-fields")
    await expect(fields).to_contain_text(XSS[0])
    assert watched.dialogs == []


# -- auto-scroll ----------------------------------------------------------------------


async def test_output_follows_the_end_until_the_reader_scrolls_up(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("ticker", module("ticker"))
    await watched.submit(args=["2000"])
    output = page.get_by_test_id("job-output")
    at_end = "e => e.scrollTop + e.clientHeight >= e.scrollHeight - 4"
    await expect(output).to_contain_text("tick 40")  # more lines than the box shows
    assert await output.evaluate("e => e.scrollHeight > e.clientHeight")
    assert await output.evaluate(at_end), "following the end"

    await output.evaluate("e => { e.scrollTop = 0; }")
    await expect(output).to_contain_text("tick 80")
    assert await output.evaluate("e => e.scrollTop") == 0, "scrolled up: the view stays put"

    await output.evaluate("e => { e.scrollTop = e.scrollHeight; }")
    await expect(output).to_contain_text("tick 120")
    assert await output.evaluate(at_end), "back at the end: following again"
    await page.get_by_test_id("cancel-job").click()
    await expect(page.get_by_test_id("job-state")).to_have_text("cancelled")


async def test_markup_in_an_artifact_name_is_shown_as_text(
    watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    await watched.sign_in()
    await watched.upload("markupname", module("markupname"))
    await watched.submit()
    await expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    name = "<img src=x onerror=alert(1)> #1?.txt"  # '#' and '?' must be escaped in its URL
    link = page.get_by_test_id("job-artifacts").get_by_role("button", name=name)
    await expect(link).to_have_text(name)
    assert await page.locator("img").count() == 0
    async with page.expect_download() as info:
        await link.click()
    await (await info.value).save_as(tmp_path / "artifact")
    assert (tmp_path / "artifact").read_text() == "markup\n"


async def test_lost_server_is_reported_and_the_report_clears_when_it_answers(
    watched: Watched, alpha: Client,
) -> None:
    page = watched.page
    watched.expected_errors.append("net::ERR_CONNECTION_REFUSED")
    await watched.sign_in()

    async def unreachable(route: Any) -> None:
        await route.abort("connectionrefused")

    await page.route("**/v1/pool", unreachable)
    await expect(page.get_by_test_id("error")).to_contain_text("did not answer")
    # The jobs list still answers, which says nothing about the pool: the report
    # stays (it used to be cleared by the next good jobs poll, within a second).
    job = await alpha.submit(await alpha.upload(unique("noop")))
    await expect(
        page.get_by_test_id("jobs-list").locator(f"tr[data-job-id='{job['id']}']")
    ).to_be_visible()
    assert await page.get_by_test_id("error").is_visible()
    await expect(page.get_by_test_id("error")).to_contain_text("did not answer")
    await page.unroute("**/v1/pool", unreachable)
    await expect(page.get_by_test_id("error")).to_be_hidden()
    await expect(page.get_by_test_id("pool-idle")).to_have_text(re.compile(r"^\d+$"))


# -- modules, drag and drop, filter ----------------------------------------------------


async def test_a_dropped_file_is_uploaded(watched: Watched) -> None:
    page = watched.page
    await watched.sign_in()
    wasm = unique("noop")
    await page.evaluate(
        """([name, bytes]) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], name, {type: "application/wasm"}));
            document.getElementById("drop").dispatchEvent(
                new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
        }""",
        ["dropped.wasm", list(wasm)],
    )
    sha = hashlib.sha256(wasm).hexdigest()
    await expect(page.locator("#upload-status")).to_contain_text(f"dropped.wasm: stored as {sha}")
    await expect(page.locator("#module-select")).to_have_value(sha)


async def test_an_earlier_module_is_picked_from_the_list(watched: Watched, alpha: Client) -> None:
    page = watched.page
    wasm = unique("upper")
    sha = await alpha.upload(wasm)
    await watched.sign_in()
    row = page.get_by_test_id("modules-list").locator("tr", has_text=sha[:12])
    await expect(row).to_contain_text(f"{len(wasm) / 1024:.1f} KiB")
    await row.get_by_role("button", name="Use").click()
    await expect(page.locator("#module-select")).to_have_value(sha)
    await watched.submit(input_lines=["picked"])
    await expect(page.get_by_test_id("job-output")).to_have_text("PICKED\n")
    # the list now says when the module was last used
    await page.reload()
    await expect(row.locator("td").nth(3)).to_have_text(re.compile(r"\d:\d\d"))


async def test_jobs_list_filters_by_state(watched: Watched, alpha: Client) -> None:
    page = watched.page
    noop = await alpha.upload(unique("noop"))
    ok = await alpha.submit(noop)
    cancelled = await alpha.submit(await alpha.upload(module("spin")), limits={"timeout_s": 30})
    await alpha.json("DELETE", f"/v1/jobs/{cancelled['id']}", 200)
    await watched.sign_in()
    jobs = page.get_by_test_id("jobs-list")
    await expect(jobs.locator(f"tr[data-job-id='{ok['id']}']")).to_contain_text("succeeded")
    await expect(jobs.locator(f"tr[data-job-id='{cancelled['id']}']")).to_be_visible()
    await page.locator("#state-filter").select_option("cancelled")
    await expect(jobs.locator(f"tr[data-job-id='{ok['id']}']")).to_have_count(0)
    await expect(jobs.locator(f"tr[data-job-id='{cancelled['id']}']")).to_contain_text(
        "cancelled")
    states = await jobs.locator("td:nth-child(2)").all_text_contents()
    assert states and set(states) == {"cancelled"}, states
    await jobs.locator(f"tr[data-job-id='{cancelled['id']}']").click()
    await expect(page.get_by_test_id("job-state")).to_have_text("cancelled")
    assert page.url.endswith(f"#/job/{cancelled['id']}")
