"""The WASI modules the bench submits, and what each should print for its input.

A module is named like the test fixtures (``noop``, ``upper``, ...): the
prebuilt ``tests/fixtures/wasm/NAME.wasm`` or, failing that,
``tests/fixtures/wasm/src/NAME.wat`` compiled with wasmtime (the same
lookup as ``tests/support/wasm_fixtures.py``). A value ending in ``.wasm`` is read
as a file path instead. ``gen:large`` is built by the bench itself (see
:func:`large_module`): a module of a few MB that takes wasmtime a second or
more to compile, for the compile-cache comparison.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "wasm"

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class FixtureError(Exception):
    pass


def available() -> list[str]:
    found = {p.stem for p in FIXTURES.glob("*.wasm")}
    found.update(p.stem for p in (FIXTURES / "src").glob("*.wat"))
    return [*sorted(found), *GENERATED]


LARGE_FUNCTIONS = 10_000
LARGE_DATA_KIB = 2048
VARIANT_SECTION = "poold-bench-variant"
GENERATED = ("gen:large",)


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_variant(wasm: bytes, tag: str) -> bytes:
    """``wasm`` with a custom section appended whose payload is ``tag``: a module
    that behaves the same but has another sha256, so poold stores and compiles it
    afresh (its compile cache is keyed by sha256)."""
    name = VARIANT_SECTION.encode()
    payload = _leb128(len(name)) + name + tag.encode()
    return wasm + b"\x00" + _leb128(len(payload)) + payload


@functools.lru_cache(maxsize=4)
def large_module(functions: int = LARGE_FUNCTIONS, data_kib: int = LARGE_DATA_KIB) -> bytes:
    """A WASI command of ``functions`` small functions (what makes Cranelift work)
    and a ``data_kib`` KiB data segment (what makes the file a few MB); ``_start``
    calls a hundred of the functions and returns (exit status 0, no output).
    10,000 functions and 2 MiB: about 2.4 MB, 1-2 s to compile on one core."""
    import wasmtime  # noqa: PLC0415 - only generated modules need it

    pages = max(1, (data_kib * 1024) // 65536 + 2)
    parts = ["(module", f'  (memory (export "memory") {pages})']
    parts.extend(
        f"  (func $f{i} (param i32) (result i32) local.get 0 i32.const {i} i32.add "
        f"i32.const 3 i32.mul local.get 0 i32.xor i32.const {i + 7} i32.rem_u)"
        for i in range(functions)
    )
    step = max(1, functions // 100)
    calls = " ".join(f"i32.const {i} call $f{i} drop" for i in range(0, functions, step))
    parts.append(f'  (func (export "_start") {calls})')
    if data_kib:
        parts.append('  (data (i32.const 1024) "' + "\\a5" * (1024 * data_kib) + '")')
    parts.append(")")
    return bytes(wasmtime.wat2wasm("\n".join(parts)))


def load_module(name: str, *, base: Path | None = None) -> bytes:
    """The binary of fixture ``name``, of the file ``name`` if it ends in .wasm, or
    of a generated module (``gen:large``)."""
    if name in GENERATED:
        return large_module()
    if name.endswith(".wasm"):
        path = Path(name)
        if not path.is_absolute() and base is not None and (base / path).is_file():
            path = base / path
        try:
            return path.read_bytes()
        except OSError as e:
            raise FixtureError(f"cannot read module file {path}: {e}") from e
    if not _NAME_RE.match(name):
        raise FixtureError(f"invalid fixture name {name!r}; available: {', '.join(available())}")
    wasm = FIXTURES / f"{name}.wasm"
    wat = FIXTURES / "src" / f"{name}.wat"
    if wasm.is_file():
        return wasm.read_bytes()
    if wat.is_file():
        import wasmtime  # noqa: PLC0415 - only WAT fixtures need it

        return bytes(wasmtime.wat2wasm(wat.read_text(encoding="utf-8")))
    raise FixtureError(f"unknown fixture module {name!r}; available: {', '.join(available())}")


def input_records(seq: int, count: int) -> list[str]:
    """The input records of job ``seq``: distinct, mixed case."""
    return [f"bench job {seq} record {i} Mixed Case" for i in range(count)]


def expected_output(module: str, records: list[str]) -> list[str] | None:
    """What the module prints for ``records``; None when the bench cannot tell."""
    if module in ("noop", "gen:large"):
        return []
    if module == "upper":
        return [r.upper() for r in records]
    return None
