"""Helpers shared by the module test files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.support.wasm_fixtures import module, with_custom_section


def variant(tag: str) -> tuple[bytes, str]:
    """A distinct module (its own sha256) that runs like ``noop``."""
    wasm = with_custom_section(module("noop"), f"poold-test-{tag}", b"")
    return wasm, hashlib.sha256(wasm).hexdigest()


def stored(tmp_path: Path, wasm: bytes) -> Path:
    path = tmp_path / f"{hashlib.sha256(wasm).hexdigest()}.wasm"
    path.write_bytes(wasm)
    return path
