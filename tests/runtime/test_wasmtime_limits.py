"""The wasmtime driver holds a job to its limits, and says why a job failed.

``limits.memory_mb`` must hold for the job as a whole: every linear memory and
every table. Each attack runs in its own process, whose peak resident size is what the
module actually reached; it is
compared with a harmless module's peak in the same kind of process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from poold.runtime.wasmtime_runner import StoreBudget

MIB = 1024 * 1024

_RUN_ONE = """
import hashlib, json, sys
from pathlib import Path
from poold.runtime.engine import CompileCache
from poold.runtime.runner import RunRequest
from poold.runtime.wasmtime_runner import WasmtimeRunner
wasm, cache, out, memory_mb = sys.argv[1:5]
data = Path(wasm).read_bytes()
request = RunRequest(
    wasm_path=Path(wasm), sha256=hashlib.sha256(data).hexdigest(), args=(), env=(),
    timeout_s=60, memory_mb=int(memory_mb), fuel=None, out_dir=Path(out), stdin_path=None,
)
result = WasmtimeRunner(CompileCache(Path(cache))).run(
    request, stdout=lambda b: None, stderr=lambda b: None, on_start=lambda: None)
status = Path("/proc/self/status").read_text()
peak_kib = int(status.split("VmHWM:")[1].split()[0])
print(json.dumps({"state": result.state, "error": result.error, "peak_kib": peak_kib}))
"""


def peak_of(tmp: Path, wat: str, *, memory_mb: int) -> tuple[dict[str, Any], float]:
    """The outcome of one job in a fresh process, and that process's peak RSS in MiB
    (its own VmHWM: ``ru_maxrss`` would carry over the parent's peak across exec)."""
    wasm = tmp / f"m{len(list(tmp.glob('m*.wasm')))}.wasm"
    wasm.write_bytes(bytes(wasmtime.wat2wasm(wat)))
    (tmp / "out").mkdir(exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", _RUN_ONE, str(wasm), str(tmp / "cache"), str(tmp / "out"),
         str(memory_mb)],
        capture_output=True, timeout=100, check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result, result["peak_kib"] / 1024


FILL_ONE_MEMORY = """
(module
  (memory 1)
  (func (export "_start") (local $at i32)
    (block $full
      (loop $grow
        (br_if $full (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
        (br $grow)))
    ;; touch every 4 KiB it got, so all of it is really resident
    (block $done
      (loop $touch
        (br_if $done (i32.ge_u (local.get $at) (i32.mul (memory.size) (i32.const 65536))))
        (i32.store8 (local.get $at) (i32.const 1))
        (local.set $at (i32.add (local.get $at) (i32.const 4096)))
        (br $touch)))))
"""


def many_memories(count: int, pages: int) -> str:
    """``count`` memories, each grown by ``pages`` and every 4 KiB of them touched."""
    memories = "\n".join(f"  (memory $m{i} 1)" for i in range(count))
    body = [
        f"""
    (drop (memory.grow $m{i} (i32.const {pages})))
    (local.set $p (i32.const 0))
    (block $d{i} (loop $t{i}
      (br_if $d{i} (i32.ge_u (local.get $p) (i32.mul (memory.size $m{i}) (i32.const 65536))))
      (i32.store8 $m{i} (local.get $p) (i32.const 1))
      (local.set $p (i32.add (local.get $p) (i32.const 4096)))
      (br $t{i})))"""
        for i in range(count)
    ]
    return f"""(module
{memories}
  (func (export "_start") (local $p i32){"".join(body)}))"""


TABLE_BOMB = """
(module
  (table 1 funcref)
  (func (export "_start")
    ;; first all at once (refused under a cap), then in steps up to whatever is allowed
    (drop (table.grow 0 (ref.null func) (i32.const 60000000)))
    (block $full
      (loop $grow
        (br_if $full (i32.eq (table.grow 0 (ref.null func) (i32.const 65536)) (i32.const -1)))
        (br_if $full (i32.ge_u (table.size 0) (i32.const 60000000)))
        (br $grow)))))
"""

NOOP = '(module (memory 1) (func (export "_start")))'


@pytest.fixture
def baseline(tmp_path: Path) -> float:
    _, peak = peak_of(tmp_path, NOOP, memory_mb=16)
    return peak


def test_budget_keeps_memories_and_tables_within_the_cap() -> None:
    for memory_mb in (1, 16, 256, 4096):
        budget = StoreBudget.of(memory_mb)
        tables = 4 * budget.table_elements * 8
        assert budget.memory_bytes + tables <= memory_mb * MIB
        assert budget.memory_bytes >= memory_mb * MIB * 15 // 16


def test_one_memory_stays_within_the_cap(tmp_path: Path, baseline: float) -> None:
    result, peak = peak_of(tmp_path, FILL_ONE_MEMORY, memory_mb=64)
    assert result["state"] == "succeeded", result
    assert peak - baseline <= 64 + 16, f"peak {peak:.0f} MiB vs baseline {baseline:.0f} MiB"
    # and it did get (nearly) all of it: the cap is not set absurdly low
    assert peak - baseline >= 48


def test_many_memories_cannot_multiply_the_cap(tmp_path: Path, baseline: float) -> None:
    result, peak = peak_of(tmp_path, many_memories(16, 250), memory_mb=16)
    assert peak - baseline <= 16 + 16, f"peak {peak:.0f} MiB vs baseline {baseline:.0f} MiB"
    assert result["state"] == "failed", result
    assert "more than 1 linear memory" in result["error"], result


def test_table_growth_counts_against_the_cap(tmp_path: Path, baseline: float) -> None:
    result, peak = peak_of(tmp_path, TABLE_BOMB, memory_mb=16)
    assert peak - baseline <= 16 + 16, f"peak {peak:.0f} MiB vs baseline {baseline:.0f} MiB"
    assert result["state"] == "succeeded", result


def test_a_trap_says_why(tmp_path: Path) -> None:
    wat = """(module (memory 1) (func $divide (export "_start")
               (drop (i32.div_s (i32.const 1) (i32.const 0)))))"""
    result, _ = peak_of(tmp_path, wat, memory_mb=16)
    assert result["state"] == "failed"
    assert result["error"].startswith("the module trapped: integer divide by zero"), result
    assert "backtrace" not in result["error"]
    result, _ = peak_of(tmp_path, '(module (func (export "_start") unreachable))', memory_mb=16)
    assert "unreachable" in result["error"], result
