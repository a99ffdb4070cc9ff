"""schemathesis against docs/openapi.json and a real daemon: every generated request,
valid or not, answers a status the document lists for its operation, with the
documented content type and body shape, and never a 5xx.

schemathesis sends requests synchronously, so the daemon runs on an event loop
of its own in a thread. The examples per operation are bounded (``EXAMPLES``) so
the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from schemathesis import checks

from poold.daemon import Daemon
from tests.support.daemon import TOKENS, make_settings
from tests.support.wasm_fixtures import module, truncated

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
EXAMPLES = 15
AUTH = {"Authorization": f"Bearer {TOKENS['alpha']}"}

schema = schemathesis.openapi.from_dict(json.loads(DOC.read_text()))

# module uploads: random bytes, bytes behind the wasm header, and real modules
schemathesis.openapi.media_type("application/wasm", st.one_of(
    st.binary(max_size=256),
    st.binary(max_size=256).map(lambda tail: b"\x00asm\x01\x00\x00\x00" + tail),
    st.sampled_from([module("noop"), truncated(module("noop")), module("echoenv")]),
))


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, broker: str) -> Iterator[str]:
    settings_ = make_settings(tmp_path_factory.mktemp("schemathesis"), broker, pool__min_idle=0,
                              server__max_upload_mb=1, server__max_input_mb=1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="schemathesis-daemon", daemon=True)
    thread.start()
    daemon = Daemon(settings_)
    try:
        asyncio.run_coroutine_threadsafe(daemon.start(), loop).result(60)
        yield daemon.url
    finally:
        asyncio.run_coroutine_threadsafe(daemon.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.timeout(300)
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_documented_answers(case: schemathesis.Case,
                                                   base_url: str) -> None:
    case.call_and_validate(
        base_url=base_url, headers=AUTH, timeout=30,
        checks=[checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance,
                checks.response_headers_conformance],
    )
