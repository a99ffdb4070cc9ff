"""Look at uploaded bytes before anything runs them.

The checks run cheapest first: a native executable or a wasm component is
recognised from its first bytes; the section walk finds precompiled (AOT)
sections and the exports; only then does the runtime validate every function.
Each rejection carries a sentence the uploader can act on and a short
``reason`` used as a metric label (never a user-supplied string).
"""

from __future__ import annotations

from dataclasses import dataclass

from poold.errors import ModuleError

WASM_MAGIC = b"\x00asm"
CORE_VERSION = b"\x01\x00\x00\x00"

# Custom sections that carry native code compiled ahead of time. WasmEdge's
# universal-wasm format appends a "wasmedge" section; running it would run
# native code the uploader chose, so such modules are refused outright.
# WasmEdge's loader (lib/loader/ast/module.cpp) takes a custom section as its
# AOT section when the name, a length-prefixed string, equals the 8 bytes
# "wasmedge" exactly (a std::string comparison: case and length count, so
# "wasmedge\0" is not one), and it tries every such section in turn. The
# names are compared here as raw bytes for that reason; look-alikes (another
# case, NUL or white space around the name) are refused too, as a reader that
# trims or folds names would take them for the real thing.
AOT_SECTIONS = frozenset({b"wasmedge", b"wasmedge-aot", b".wasmedge", b"wamr-aot", b"aot"})

MAX_MEMORIES = 1
"""Linear memories a module may have (defined or imported). The runtime caps each
memory separately, so a job's memory cap only holds for the job as a whole if
there is one; WASI programs (C, Rust, Go, Zig) use exactly one."""
MAX_TABLES = 4
"""Tables a module may have (defined or imported). Compilers emit one (for
indirect calls); a few more appear with reference types."""

_NATIVE = (
    (b"\x7fELF", "an ELF executable (Linux native code)"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable (macOS native code)"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable (macOS native code)"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable (macOS native code)"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary (macOS native code)"),
    (b"MZ", "a PE executable (Windows native code)"),
    (b"#!", "a script"),
)


class ModuleRejected(ModuleError):
    """The bytes are not a module poold will run; ``str()`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModuleInfo:
    exports: frozenset[str]
    custom_sections: tuple[str, ...]
    memories: int = 0
    tables: int = 0


def _is_aot_name(raw: bytes) -> bool:
    name = raw.strip(b"\x00 \t\r\n").lower()
    return raw in AOT_SECTIONS or name in AOT_SECTIONS


def uleb128(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The unsigned LEB128 at ``pos`` and the position after it. IndexError: it runs
    past the end of ``data``; ValueError: it is longer than 64 bits."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError(pos)


def _leb128(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    try:
        return uleb128(data, pos)
    except IndexError:
        raise ModuleRejected(
            "the module is truncated: a section header runs past the end of the file",
            reason="truncated",
        ) from None
    except ValueError:
        raise ModuleRejected(
            "the module has a malformed section size", reason="malformed") from None


def check_header(head: bytes) -> None:
    """Reject from the first bytes alone: native code, components, non-wasm."""
    for magic, what in _NATIVE:
        if head.startswith(magic):
            raise ModuleRejected(
                f"this is {what}, not a WebAssembly module; upload a .wasm file built for "
                "wasm32-wasi (for example with clang --target=wasm32-wasi)",
                reason="native",
            )
    if not head.startswith(WASM_MAGIC):
        raise ModuleRejected(
            "this is not a WebAssembly module: it does not start with the wasm magic bytes "
            "\\0asm; upload the binary .wasm file, not text or an archive",
            reason="not_wasm",
        )
    version = head[4:8]
    if len(version) < 4:
        raise ModuleRejected(
            "the module is truncated: its header is incomplete", reason="truncated"
        )
    if version != CORE_VERSION:
        raise ModuleRejected(
            "this is a WebAssembly component or an unknown wasm version; poold runs core "
            "WASI modules (wasm32-wasi / wasip1), not components",
            reason="unsupported_version",
        )


def inspect_module(data: bytes) -> ModuleInfo:
    """Walk the sections: find AOT sections and the exports, without compiling."""
    check_header(data[:8])
    view = memoryview(data)
    pos = 8
    exports: set[str] = set()
    customs: list[str] = []
    memories = tables = 0
    while pos < len(view):
        section_id = view[pos]
        size, body = _leb128(view, pos + 1)
        end = body + size
        if end > len(view):
            raise ModuleRejected(
                "the module is truncated: its last section runs past the end of the file",
                reason="truncated",
            )
        if section_id == 0:
            name_len, name_pos = _leb128(view, body)
            raw = bytes(view[name_pos : name_pos + name_len])
            name = raw.decode("utf-8", "replace")
            customs.append(name)
            if _is_aot_name(raw):
                raise ModuleRejected(
                    f"the module carries a precompiled (AOT) section {name!r}; poold only runs "
                    "portable wasm and compiles it itself. Upload the module before AOT "
                    "compilation",
                    reason="aot",
                )
        elif section_id == 2:
            imported = _imports(view, body)
            tables += imported.count(1)
            memories += imported.count(2)
        elif section_id == 4:
            tables += _leb128(view, body)[0]
        elif section_id == 5:
            memories += _leb128(view, body)[0]
        elif section_id == 7:
            count, p = _leb128(view, body)
            for _ in range(count):
                name_len, p = _leb128(view, p)
                exports.add(bytes(view[p : p + name_len]).decode("utf-8", "replace"))
                p += name_len + 1  # name, then the kind byte
                _, p = _leb128(view, p)  # index
        pos = end
    _check_counts(memories=memories, tables=tables)
    return ModuleInfo(exports=frozenset(exports), custom_sections=tuple(customs),
                      memories=memories, tables=tables)


def _check_counts(*, memories: int, tables: int) -> None:
    if memories > MAX_MEMORIES:
        raise ModuleRejected(
            f"the module has {memories} linear memories; poold runs modules with at most "
            f"{MAX_MEMORIES}, so that limits.memory_mb caps the job as a whole. Build it "
            "without the multi-memory feature",
            reason="memories",
        )
    if tables > MAX_TABLES:
        raise ModuleRejected(
            f"the module has {tables} tables; poold runs modules with at most {MAX_TABLES}, "
            "whose elements count against limits.memory_mb",
            reason="tables",
        )


def _skip_limits(view: memoryview, pos: int) -> int:
    flags = view[pos]
    _, pos = _leb128(view, pos + 1)  # minimum
    if flags & 0x01:
        _, pos = _leb128(view, pos)  # maximum
    return pos


def _skip_reftype(view: memoryview, pos: int) -> int:
    kind = view[pos]
    pos += 1
    if kind in (0x63, 0x64):  # (ref null? <heap type>): a signed LEB128 follows
        _, pos = _leb128(view, pos)
    return pos


def _imports(view: memoryview, body: int) -> list[int]:
    """The kind of each import (0 function, 1 table, 2 memory, 3 global, 4 tag)."""
    count, p = _leb128(view, body)
    kinds = []
    try:
        for _ in range(count):
            for _name in range(2):  # module, then field
                length, p = _leb128(view, p)
                p += length
            kind = view[p]
            p += 1
            kinds.append(kind)
            if kind == 0:
                _, p = _leb128(view, p)
            elif kind == 1:
                p = _skip_limits(view, _skip_reftype(view, p))
            elif kind == 2:
                p = _skip_limits(view, p)
            elif kind == 3:
                p = _skip_reftype(view, p) + 1  # value type, then mutability
            elif kind == 4:
                _, p = _leb128(view, p + 1)
            else:
                break  # an encoding this walk does not know: validation decides
    except IndexError:
        raise ModuleRejected(
            "the module is truncated: its import section runs past its end", reason="truncated"
        ) from None
    return kinds
