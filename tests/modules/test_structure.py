"""Structural limits, counted from section and body headers without compiling:
each limit refuses a module just over it, names its key, and lets one at it pass."""

from __future__ import annotations

import pytest
import wasmtime

from poold.config import ModuleSettings
from poold.modules.structure import StructureLimits, check_structure
from poold.runtime.engine import make_engine
from poold.runtime.inspect import ModuleRejected
from tests.support.wasm_encode import many_functions, section, uleb

LIMITS = StructureLimits(functions=50, code_bytes=64 * 1024, function_bytes=1024, locals=100)


def refused(wasm: bytes, key: str, reason: str) -> str:
    wasmtime.Module.validate(make_engine(fuel=False), wasm)  # a valid module all the same
    with pytest.raises(ModuleRejected) as caught:
        check_structure(wasm, LIMITS)
    assert caught.value.reason == reason
    assert key in str(caught.value), caught.value
    return str(caught.value)


def test_functions() -> None:
    check_structure(many_functions(50), LIMITS)
    message = refused(many_functions(51), "modules.max_functions", "functions")
    assert "51 functions" in message and "at most 50" in message, message


def test_function_size() -> None:
    check_structure(many_functions(1, body_nops=1020), LIMITS)  # 1 + 1020 + 1 + size byte
    refused(many_functions(1, body_nops=1030), "modules.max_function_kb", "function_size")


def test_locals() -> None:
    check_structure(many_functions(3, locals_per_function=100), LIMITS)
    refused(many_functions(3, locals_per_function=101), "modules.max_locals", "locals")


def test_locals_in_several_groups_add_up() -> None:
    types = section(1, b"\x01\x60\x00\x00")
    functions = section(3, b"\x01\x00")
    exports = section(7, b"\x01" + uleb(6) + b"_start\x00\x00")
    body = b"\x03" + uleb(40) + b"\x7f" + uleb(40) + b"\x7e" + uleb(40) + b"\x7d" + b"\x0b"
    code = section(10, b"\x01" + uleb(len(body)) + body)
    wasm = b"\x00asm\x01\x00\x00\x00" + types + functions + exports + code
    refused(wasm, "modules.max_locals", "locals")


def test_code_size() -> None:
    limits = StructureLimits(functions=1000, code_bytes=64 * 1024, function_bytes=1024,
                             locals=100)
    check_structure(many_functions(60, body_nops=1000), limits)
    with pytest.raises(ModuleRejected) as caught:
        check_structure(many_functions(70, body_nops=1000), limits)
    assert caught.value.reason == "code_size"
    assert "modules.max_code_mb" in str(caught.value)


def test_a_million_functions_is_refused_by_default() -> None:
    """The bomb from the issue: 4 MB, a million empty functions, under the default
    limits."""
    bomb = many_functions(1_000_000)
    assert 3_900_000 < len(bomb) < 4_100_000
    with pytest.raises(ModuleRejected) as caught:
        check_structure(bomb, StructureLimits.from_settings(ModuleSettings()))
    assert "1,000,000 functions" in str(caught.value)
    assert "modules.max_functions" in str(caught.value)


def test_malformed_modules_are_left_to_validation() -> None:
    """A truncated module is not this check's to describe: it passes, and the runtime's
    validation refuses it with its own message."""
    check_structure(many_functions(5)[:-3], LIMITS)
