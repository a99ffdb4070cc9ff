"""Real WASI test modules for the test suite.

Prebuilt C modules live in ``tests/fixtures/wasm/NAME.wasm`` (rebuild with
``tests/fixtures/wasm/build.sh``); WAT modules in ``tests/fixtures/wasm/src/``
are compiled on first use with :func:`wasmtime.wat2wasm`.
"""

from __future__ import annotations

import re
from pathlib import Path

import wasmtime

from tests.support.wasm_encode import uleb

__all__ = ["FIXTURES", "module", "names", "truncated", "with_custom_section"]

FIXTURES: Path = Path(__file__).resolve().parents[1] / "fixtures" / "wasm"

_WASM_MAGIC = b"\x00asm"
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_cache: dict[str, bytes] = {}


def names() -> list[str]:
    """Sorted names of every available fixture module."""
    found = {p.stem for p in FIXTURES.glob("*.wasm")}
    found.update(p.stem for p in (FIXTURES / "src").glob("*.wat"))
    return sorted(found)


def module(name: str) -> bytes:
    """Return the binary of fixture module ``name``.

    Uses the committed ``NAME.wasm`` if present, otherwise compiles
    ``src/NAME.wat``. Results are cached. Raises ``KeyError`` for an
    unknown name.
    """
    cached = _cache.get(name)
    if cached is not None:
        return cached
    if not _NAME_RE.match(name):
        msg = f"invalid wasm fixture name {name!r}; available: {', '.join(names())}"
        raise KeyError(msg)
    wasm_path = FIXTURES / f"{name}.wasm"
    wat_path = FIXTURES / "src" / f"{name}.wat"
    if wasm_path.is_file():
        data = wasm_path.read_bytes()
    elif wat_path.is_file():
        data = bytes(wasmtime.wat2wasm(wat_path.read_text(encoding="utf-8")))
    else:
        msg = (
            f"unknown wasm fixture {name!r}; available: {', '.join(names())} "
            f"(C modules must be built with {FIXTURES / 'build.sh'})"
        )
        raise KeyError(msg)
    _cache[name] = data
    return data


def with_custom_section(wasm: bytes, name: str, payload: bytes) -> bytes:
    """Return ``wasm`` with a custom section (id 0) named ``name`` appended.

    E.g. ``with_custom_section(module("noop"), "wasmedge", b"...")`` fakes a
    WasmEdge AOT-compiled module that is still a valid wasm binary.
    """
    if not wasm.startswith(_WASM_MAGIC):
        msg = "not a wasm binary (missing \\0asm magic)"
        raise ValueError(msg)
    encoded = name.encode("utf-8")
    content = uleb(len(encoded)) + encoded + payload
    return wasm + b"\x00" + uleb(len(content)) + content


def truncated(wasm: bytes) -> bytes:
    """Return a cut-off copy of ``wasm`` (about half of it) that fails validation.

    The 8-byte header is kept when the input is long enough, so the result
    still looks like a wasm binary.
    """
    engine = wasmtime.Engine()
    cut = max(len(wasm) // 2, min(len(wasm) - 1, 9))
    while cut > 0:
        candidate = wasm[:cut]
        try:
            wasmtime.Module.validate(engine, candidate)
        except wasmtime.WasmtimeError:
            return candidate
        cut -= 1
    return wasm[:0]
