"""Pytest fixtures for fakekube; import them into a ``conftest.py``.

``from fakekube.fixtures import fake_api, fake_core_v1, fake_kubelet`` makes
them available;
each test gets a fresh server, so no state leaks between tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from .kubelet import FakeKubelet
from .server import FakeApiServer


@pytest_asyncio.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    """A running ``FakeApiServer``."""
    async with FakeApiServer() as server:
        yield server


@pytest_asyncio.fixture
async def fake_api_client(fake_api: FakeApiServer) -> AsyncIterator[Any]:
    """A kubernetes-asyncio ``ApiClient`` for ``fake_api`` (closed afterwards)."""
    async with ApiClient(configuration=fake_api.client_configuration()) as client:
        yield client


@pytest_asyncio.fixture
async def fake_core_v1(fake_api_client: Any) -> CoreV1Api:
    """``CoreV1Api`` bound to ``fake_api_client``."""
    return CoreV1Api(fake_api_client)


@pytest_asyncio.fixture
async def fake_kubelet(fake_api: FakeApiServer) -> AsyncIterator[FakeKubelet]:
    """A ``FakeKubelet`` with default settings on ``fake_api``."""
    async with FakeKubelet(fake_api) as kubelet:
        yield kubelet
