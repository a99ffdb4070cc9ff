"""The client side of ``poold submit``: upload, submit, follow, exit with the code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

EXIT_PLATFORM_ERROR = 70
EXIT_TIMED_OUT = 124
EXIT_CANCELLED = 130
EXIT_BROKEN_PIPE = 141


@dataclass
class SubmitOptions:
    url: str
    token: str
    module: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    input: list[str] = field(default_factory=list)
    limits: dict[str, Any] = field(default_factory=dict)


class ApiError(Exception):
    pass


async def _check(response: aiohttp.ClientResponse) -> Any:
    if response.status >= 400:
        try:
            message = (await response.json())["error"]
        except (aiohttp.ContentTypeError, KeyError, ValueError):
            message = await response.text()
        raise ApiError(f"{response.method} {response.url.path}: {response.status} {message}")
    return await response.json()


async def _stream_logs(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url, headers={"Accept": "text/event-stream"}) as response:
        event = ""
        data: list[str] = []
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            elif not line:
                if event == "log":
                    sys.stderr.write("\n".join(data))
                    sys.stderr.flush()
                data = []


async def run_submit(options: SubmitOptions) -> int:
    headers = {"Authorization": f"Bearer {options.token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            body = options.module.read_bytes()
            async with session.put(f"{options.url}/v1/modules", data=body,
                                   headers={"Content-Type": "application/wasm"}) as r:
                module = await _check(r)
            request = {"module": module["sha256"], "args": options.args, "env": options.env,
                       "input": options.input, "limits": options.limits}
            async with session.post(f"{options.url}/v1/jobs", json=request) as r:
                job = await _check(r)
            base = f"{options.url}/v1/jobs/{job['id']}"
            logs = asyncio.create_task(_stream_logs(session, f"{base}/logs"))
            async with session.get(f"{base}/output", params={"follow": "true"}) as r:
                if r.status >= 400:
                    await _check(r)
                async for line in r.content:
                    sys.stdout.write(line.decode("utf-8", "replace"))
                    sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(logs, 10)
            async with session.get(base) as r:
                job = await _check(r)
    except BrokenPipeError:
        # our reader went away (e.g. `| head`): stop quietly, as other tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - replaces the closed pipe
        return EXIT_BROKEN_PIPE
    except (ApiError, aiohttp.ClientError, OSError) as e:
        print(f"poold submit: {e}", file=sys.stderr)
        return EXIT_PLATFORM_ERROR
    state = job["state"]
    if state in {"succeeded", "failed"} and job.get("exit_code") is not None:
        if state == "failed":
            print(f"poold submit: job {job['id']} failed: {job.get('error')}", file=sys.stderr)
        return int(job["exit_code"])
    if state != "succeeded":
        print(f"poold submit: job {job['id']} ended {state}: {job.get('error')}", file=sys.stderr)
    return {"succeeded": 0, "timed_out": EXIT_TIMED_OUT, "cancelled": EXIT_CANCELLED}.get(
        state, EXIT_PLATFORM_ERROR if state == "error" else 1
    )
