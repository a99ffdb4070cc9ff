#!/usr/bin/env bash
# Rebuild the languages benchmark's wasm modules from the C sources here
# (WASI preview1 commands, like tests/fixtures/wasm/build.sh). The native baseline is
# built by the bench itself (cc -O2) when it runs.
# Requires: clang, lld, wasi-libc, libclang-rt-dev-wasm32 (Debian/Ubuntu).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CC="${CC:-clang}"
CFLAGS=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror -s -Wl,--strip-all)

for name in sieve wordrev; do
    "$CC" "${CFLAGS[@]}" -o "$here/$name.wasm.tmp" "$here/$name.c"
    mv "$here/$name.wasm.tmp" "$here/$name.wasm"
    printf '%8d  %s.wasm\n' "$(wc -c <"$here/$name.wasm")" "$name"
done
