"""What the upload check refuses before anything runs a module."""

from __future__ import annotations

import pytest
import wasmtime

from poold.runtime.inspect import MAX_TABLES, ModuleRejected, inspect_module
from tests.support.wasm_fixtures import module, names, with_custom_section


@pytest.mark.parametrize("name", names())
def test_every_fixture_passes(name: str) -> None:
    info = inspect_module(module(name))
    assert info.memories <= 1


@pytest.mark.parametrize(
    "section", ["wasmedge", "wasmedge\0", "WasmEdge", " wasmedge", "wasmedge\0\0\0", "wamr-aot"]
)
def test_aot_sections_and_look_alikes_are_refused(section: str) -> None:
    """WasmEdge loads a section named exactly "wasmedge" as native code; names that
    only differ by case, NUL or white space are refused as well."""
    with pytest.raises(ModuleRejected, match="precompiled") as caught:
        inspect_module(with_custom_section(module("noop"), section, b"\x01" * 32))
    assert caught.value.reason == "aot"


def test_other_custom_sections_are_fine() -> None:
    inspect_module(with_custom_section(module("noop"), "wasmedge-notes-x", b"x"))
    inspect_module(with_custom_section(module("noop"), "name", b"x"))


def test_a_second_memory_is_refused() -> None:
    wasm = bytes(wasmtime.wat2wasm(
        '(module (memory 1) (memory 1) (func (export "_start")))'))
    with pytest.raises(ModuleRejected, match=r"2 linear memories.*limits\.memory_mb"):
        inspect_module(wasm)


def test_an_imported_memory_counts() -> None:
    wasm = bytes(wasmtime.wat2wasm(
        '(module (import "env" "f" (func)) (import "env" "g" (global i32))'
        ' (import "env" "m" (memory 1 2)) (memory 1) (func (export "_start")))'))
    with pytest.raises(ModuleRejected, match="2 linear memories"):
        inspect_module(wasm)


def test_too_many_tables_are_refused() -> None:
    tables = " ".join(["(table 1 funcref)"] * MAX_TABLES)
    ok = bytes(wasmtime.wat2wasm(f'(module {tables} (func (export "_start")))'))
    assert inspect_module(ok).tables == MAX_TABLES
    imported = '(import "env" "t" (table 1 externref))'
    wasm = bytes(wasmtime.wat2wasm(f'(module {imported} {tables} (func (export "_start")))'))
    with pytest.raises(ModuleRejected, match=f"{MAX_TABLES + 1} tables"):
        inspect_module(wasm)
