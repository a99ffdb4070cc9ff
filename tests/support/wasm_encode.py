"""A small hand-written WebAssembly binary encoder for modules that are costly to
build as text: a million functions, a function with huge locals or a huge body.

Every module it makes is valid and exports ``_start`` (function 0, which returns).
"""

from __future__ import annotations


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + uleb(len(payload)) + payload


def vector(items: list[bytes] | tuple[bytes, ...], count: int | None = None) -> bytes:
    return uleb(len(items) if count is None else count) + b"".join(items)


def many_functions(
    count: int, *, locals_per_function: int = 0, body_nops: int = 0
) -> bytes:
    """``count`` functions of type () -> (), each declaring ``locals_per_function`` i32
    locals and running ``body_nops`` nops; function 0 is exported as ``_start``."""
    types = section(1, vector([b"\x60\x00\x00"]))
    functions = section(3, uleb(count) + b"\x00" * count)
    exports = section(7, vector([uleb(6) + b"_start" + b"\x00" + uleb(0)]))
    declared = vector([uleb(locals_per_function) + b"\x7f"]) if locals_per_function else b"\x00"
    code = declared + b"\x01" * body_nops + b"\x0b"
    body = uleb(len(code)) + code
    codes = section(10, uleb(count) + body * count)
    return b"\x00asm\x01\x00\x00\x00" + types + functions + exports + codes
