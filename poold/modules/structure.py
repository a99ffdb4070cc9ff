"""Structural limits of an uploaded module: what makes it costly to compile.

Compile time and memory follow the number of functions, the size of their
bodies and the locals they declare, not the file size: a 4 MB file of a
million empty functions took a minute and 5 GB to compile. These are counted
from the section headers and the code section's body headers, without decoding
a single instruction, so a module over a limit is refused in milliseconds with
a 400 that names the key to raise.
"""

from __future__ import annotations

from dataclasses import dataclass

from poold.config import ModuleSettings
from poold.runtime.inspect import ModuleRejected, uleb128

FUNCTION_SECTION = 3
CODE_SECTION = 10


@dataclass(frozen=True)
class StructureLimits:
    functions: int
    code_bytes: int
    function_bytes: int
    locals: int

    @classmethod
    def from_settings(cls, modules: ModuleSettings) -> StructureLimits:
        return cls(
            functions=modules.max_functions,
            code_bytes=modules.max_code_mb * 1024 * 1024,
            function_bytes=modules.max_function_kb * 1024,
            locals=modules.max_locals,
        )


def _skip_valtype(data: memoryview, pos: int) -> int:
    kind = data[pos]
    pos += 1
    if kind in (0x63, 0x64):  # (ref null? <heap type>): a signed LEB128 heap type follows
        while data[pos] & 0x80:
            pos += 1
        pos += 1
    return pos


def _rejected(what: str, limit: int, unit: str, key: str, reason: str) -> ModuleRejected:
    return ModuleRejected(
        f"{what}; this server compiles modules with at most {limit:,} {unit} ({key}). "
        "Compilation cost grows with it; split the program or ask the operator to raise it",
        reason=reason,
    )


def check_structure(data: bytes, limits: StructureLimits) -> None:
    """Refuse a module over a structural limit. Only sizes are read; anything
    malformed is left for the runtime's validation to describe."""
    view = memoryview(data)
    pos = 8
    try:
        while pos < len(view):
            section_id = view[pos]
            size, body = uleb128(view, pos + 1)
            if section_id == FUNCTION_SECTION:
                count, _ = uleb128(view, body)
                if count > limits.functions:
                    raise _rejected(f"the module defines {count:,} functions", limits.functions,
                                    "functions", "modules.max_functions", "functions")
            elif section_id == CODE_SECTION:
                if size > limits.code_bytes:
                    raise _rejected(f"the module's code is {size:,} bytes", limits.code_bytes,
                                    "bytes of code", "modules.max_code_mb", "code_size")
                _check_bodies(view, body, limits)
            pos = body + size
    except (IndexError, ValueError):
        return  # malformed: validation says so in its own words


def _check_bodies(view: memoryview, pos: int, limits: StructureLimits) -> None:
    count, pos = uleb128(view, pos)
    for index in range(count):
        size, start = uleb128(view, pos)
        if size > limits.function_bytes:
            raise _rejected(f"function {index} is {size:,} bytes long", limits.function_bytes,
                            "bytes per function", "modules.max_function_kb", "function_size")
        groups, p = uleb128(view, start)
        declared = 0
        for _ in range(groups):
            n, p = uleb128(view, p)
            declared += n
            if declared > limits.locals:
                raise _rejected(f"function {index} declares {declared:,} locals or more",
                                limits.locals, "locals per function", "modules.max_locals",
                                "locals")
            p = _skip_valtype(view, p)
        pos = start + size
