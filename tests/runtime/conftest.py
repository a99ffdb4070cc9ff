"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.wasm_fixtures import module


@pytest.fixture
def upper(tmp_path: Path) -> tuple[Path, str]:
    """The ``upper`` module on disk, and its sha256."""
    wasm = module("upper")
    path = tmp_path / "upper.wasm"
    path.write_bytes(wasm)
    return path, hashlib.sha256(wasm).hexdigest()
