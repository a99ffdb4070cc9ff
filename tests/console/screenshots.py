"""Takes the screenshots in docs/console.md (not a test).

Run from the repository root: ``.venv/bin/python -m tests.console.screenshots``.
It starts ``poold serve --config config/local.toml`` on a free port with its
state in a temporary folder, keeps the demo tenant busy with jobs that sleep
a few seconds, and drives Debian's Chromium (``/usr/bin/chromium``) through
the console: ``docs/console-job.png`` is a job's view while it still runs,
``docs/console-pool.png`` the pool panel after a minute and a half of load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import aiohttp
from playwright.async_api import async_playwright, expect

from poold.data.embedded import free_port
from tests.console.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.wasm_fixtures import module

ROOT = Path(__file__).resolve().parents[2]

TOKEN = "poold-local-demo-token"
LOAD_S = 90


async def ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(60):
        while True:
            if proc.poll() is not None:
                raise RuntimeError("poold exited before it was ready")
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            await asyncio.sleep(0.2)


async def load(url: str, stop: asyncio.Event) -> None:
    """Submit sleepy jobs so a few are always queued: busy, starting and idle all move."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        async with session.put(url + "/v1/modules", data=module("slowprint"),
                               headers={"Content-Type": "application/wasm"}) as r:
            sha = (await r.json())["sha256"]
        while not stop.is_set():
            async with session.get(url + "/v1/pool") as r:
                busy = (await r.json())["busy"]
            for _ in range(max(0, 10 - busy)):
                body = {"module": sha, "args": [str(random.randint(1, 6))]}
                async with session.post(url + "/v1/jobs", json=body) as r:
                    await r.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.5)


async def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "POOLD_SERVER__PORT": str(port),
               "POOLD_STATE__DIR": f"{tmp}/state", "POOLD_SLOTS__ROOT": f"{tmp}/slots"}
        proc = subprocess.Popen([sys.executable, "-m", "poold", "serve", "--config",
                                 str(ROOT / "config" / "local.toml")], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = asyncio.Event()
        try:
            await ready(url, proc)
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(CHROMIUM),
                                                  args=CHROMIUM_ARGS)
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                expect.set_options(timeout=60_000)
                await page.goto(url + "/")
                await page.get_by_test_id("token-input").fill(TOKEN)
                await page.get_by_test_id("sign-in").click()
                loader = asyncio.create_task(load(url, stop))
                await page.get_by_test_id("upload-input").set_input_files(
                    files=[{"name": "ticker.wasm", "mimeType": "application/wasm",
                            "buffer": module("ticker")}])
                await expect(page.locator("#upload-status")).to_contain_text("stored as")
                await page.get_by_test_id("args-input").fill("600")
                await page.get_by_test_id("input-text").fill("ignored\ninput")
                await page.get_by_test_id("submit-job").click()
                await expect(page.get_by_test_id("job-output")).to_contain_text("tick 60")
                await expect(page.get_by_test_id("job-state")).to_have_text("running")
                await page.screenshot(path=ROOT / "docs" / "console-job.png")
                await page.get_by_test_id("cancel-job").click()
                await asyncio.sleep(LOAD_S)  # let the chart fill with a minute and a half of load
                await page.locator("#pool").screenshot(path=ROOT / "docs" / "console-pool.png")
                stop.set()
                await loader
                await browser.close()
        finally:
            stop.set()
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
