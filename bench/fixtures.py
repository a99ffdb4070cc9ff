"""The WASI modules the bench submits, and what each should print for its input.

A module is named like the test fixtures (``noop``, ``upper``, ...): the
prebuilt ``tests/fixtures/wasm/NAME.wasm`` or, failing that,
``tests/fixtures/wasm/src/NAME.wat`` compiled with wasmtime (the same
lookup as ``tests/wasm_fixtures.py``). A value ending in ``.wasm`` is read
as a file path instead.
"""

from __future__ import annotations

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
    return sorted(found)


def load_module(name: str, *, base: Path | None = None) -> bytes:
    """The binary of fixture ``name``, or of the file ``name`` if it ends in .wasm."""
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
    if module == "noop":
        return []
    if module == "upper":
        return [r.upper() for r in records]
    return None
