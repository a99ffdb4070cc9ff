"""A poold daemon on the Kubernetes backend, against the fake API server and kubelet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from poold.daemon import Daemon
from tests.fakekube import FakeApiServer, FakeKubelet
from tests.support.daemon import DaemonFactory, make_settings

TEMPLATE = Path(__file__).parent / "runner-pod.yaml"


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as api:
        yield api


@pytest.fixture
async def kubelet(fake_api: FakeApiServer, tmp_path: Path) -> AsyncIterator[FakeKubelet]:
    (tmp_path / "slots").mkdir()
    (tmp_path / "state" / "cache").mkdir(parents=True)
    async with FakeKubelet(
        fake_api,
        pvc_paths={"poold-slots": tmp_path / "slots", "poold-cache": tmp_path / "state" / "cache"},
        max_grace=1.0,
    ) as kubelet:
        yield kubelet


@pytest.fixture
async def start_kube_daemon(
    fake_api: FakeApiServer, kubelet: FakeKubelet, tmp_path: Path, broker: str
) -> AsyncIterator[DaemonFactory]:
    started: list[Daemon] = []

    async def start(wait_idle: bool = True, **overrides: Any) -> Daemon:
        options: dict[str, Any] = {
            "pool__backend": "kubernetes",
            "kubernetes__pod_template": str(TEMPLATE),
            "kubernetes__namespace": "poold",
            "kubernetes__leader_election": "false",
            "pool__start_timeout_s": "30",
        }
        options.update(overrides)
        settings = make_settings(tmp_path, broker, **options)
        daemon = Daemon(settings, kube_configuration=fake_api.client_configuration())
        started.append(daemon)
        await daemon.start()
        if wait_idle:
            pool = daemon.pool
            assert pool is not None
            want = settings.pool.min_idle
            await pool.wait_until(lambda: pool.figures()["idle"] >= want, 60)
        return daemon

    yield start
    for daemon in started:
        await daemon.stop()
