"""Look at uploaded bytes before anything runs them.

The checks run cheapest first: a native executable or a wasm component is
recognised from its first bytes; the section walk finds precompiled (AOT)
sections and the exports; only then does the runtime validate every function.
Each rejection carries a sentence the uploader can act on and a short
``reason`` used as a metric label (never a user-supplied string).
"""

from __future__ import annotations

from dataclasses import dataclass

WASM_MAGIC = b"\x00asm"
CORE_VERSION = b"\x01\x00\x00\x00"

# Custom sections that carry native code compiled ahead of time. WasmEdge's
# universal-wasm format appends a "wasmedge" section; running it would run
# native code the uploader chose, so such modules are refused outright.
AOT_SECTIONS = frozenset({"wasmedge", "wasmedge-aot", ".wasmedge", "wamr-aot", "aot"})

_NATIVE = (
    (b"\x7fELF", "an ELF executable (Linux native code)"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable (macOS native code)"),
    (b"\xce\xfa\xed\xfe", "a Mach-O executable (macOS native code)"),
    (b"\xfe\xed\xfa\xcf", "a Mach-O executable (macOS native code)"),
    (b"\xca\xfe\xba\xbe", "a Mach-O universal binary (macOS native code)"),
    (b"MZ", "a PE executable (Windows native code)"),
    (b"#!", "a script"),
)


class ModuleRejected(Exception):
    """The bytes are not a module poold will run; ``str()`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ModuleInfo:
    exports: frozenset[str]
    custom_sections: tuple[str, ...]


def _leb128(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ModuleRejected(
                "the module is truncated: a section header runs past the end of the file",
                reason="truncated",
            )
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise ModuleRejected("the module has a malformed section size", reason="malformed")


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
            name = bytes(view[name_pos : name_pos + name_len]).decode("utf-8", "replace")
            customs.append(name)
            if name.lower() in AOT_SECTIONS:
                raise ModuleRejected(
                    f"the module carries a precompiled (AOT) section {name!r}; poold only runs "
                    "portable wasm and compiles it itself. Upload the module before AOT "
                    "compilation",
                    reason="aot",
                )
        elif section_id == 7:
            count, p = _leb128(view, body)
            for _ in range(count):
                name_len, p = _leb128(view, p)
                exports.add(bytes(view[p : p + name_len]).decode("utf-8", "replace"))
                p += name_len + 1  # name, then the kind byte
                _, p = _leb128(view, p)  # index
        pos = end
    return ModuleInfo(exports=frozenset(exports), custom_sections=tuple(customs))
