"""``python -m poold.runtime.compile``: compile one module into the cache, in a
process of its own that caps its own address space and CPU time first.

poold runs this for every new upload instead of compiling in its own process:
a module that is cheap to upload can be costly to compile (a million empty
functions took a minute and 5 GB), and none of that may land on the daemon
that serves every tenant. When the compiler runs out of memory it dies (Rust
aborts on a failed allocation), which ends only this process.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poold.runtime.compile")
    parser.add_argument("--cache", type=Path, required=True, help="the compile cache root")
    parser.add_argument("--memory-mb", type=int, required=True, help="address-space cap")
    parser.add_argument("--cpu-s", type=float, required=True, help="CPU-time cap")
    parser.add_argument("--fuel", action="store_true", help="the fuel-metering flavour")
    parser.add_argument("sha256")
    parser.add_argument("wasm", type=Path)
    args = parser.parse_args(argv)

    memory = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = math.ceil(args.cpu_s)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

    # imported after the limits are set, so the runtime's own allocations count too
    import wasmtime  # noqa: PLC0415

    from poold.runtime.engine import CompileCache  # noqa: PLC0415

    try:
        CompileCache(args.cache).precompile(args.sha256, args.wasm, fuel=args.fuel)
    except (wasmtime.WasmtimeError, MemoryError) as e:
        print(f"compilation failed: {str(e)[:500]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
