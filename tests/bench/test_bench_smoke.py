"""The benchmark end to end on a tiny scenario: a real poold subprocess, 5 noop jobs.

``tests/bench`` is itself a package named ``bench`` for pytest (``tests/`` is
on ``sys.path``), so the real ``bench/`` package is loaded from its path
under another name; its modules import each other relatively.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]

SCENARIO = """\
name = "smoke-tiny"
description = "5 noop jobs, one at a time, warm pool of 2"
role = "warm"
module = "noop"
jobs = 5
arrival = "sequential"
timeout_s = 60

[pool]
min_idle = 2
max_pods = 4
max_starting = 2

[tenant]
max_concurrent_jobs = 2

[kafka]
partitions = 4
"""


def _load_bench() -> ModuleType:
    name = "poold_bench_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO / "bench" / "__init__.py",
        submodule_search_locations=[str(REPO / "bench")],
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
def test_tiny_scenario_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench()
    scenario = tmp_path / "smoke-tiny.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    results = tmp_path / "results"

    code = bench.main([str(scenario), "--results-dir", str(results)])

    captured = capsys.readouterr()
    printed = captured.out
    (run,) = list(results.iterdir())
    log = run / "logs" / "smoke-tiny.poold.log"
    diagnosis = (f"stdout:\n{printed}\nstderr:\n{captured.err}\npoold log (tail):\n"
                 + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
    assert code == 0, diagnosis
    with (run / "jobs.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5, diagnosis
    assert {r["state"] for r in rows} == {"succeeded"}, f"{rows}\n{diagnosis}"
    assert all(r["scenario"] == "smoke-tiny" and r["phase"] == "measure" for r in rows)
    assert len({r["job_id"] for r in rows}) == 5
    for r in rows:
        assert float(r["wait_ms"]) >= 0 and float(r["e2e_ms"]) > 0
        assert r["submitted_at"] <= r["started_at"] <= r["finished_at"]
        assert r["output_ok"] in ("True", "")

    summary = (run / "summary.txt").read_text(encoding="utf-8")
    assert "smoke-tiny" in summary
    assert "smoke-tiny" in printed
    assert "warm submit-to-start p50" in summary

    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    (only,) = data["scenarios"]
    assert only["definition"]["name"] == "smoke-tiny"
    assert only["summary"]["jobs"] == 5 and only["summary"]["errors"] == 0
    assert only["daemon"]["exit_code"] is not None
    assert data["machine"]["cores"] >= 1
    assert (run / "logs" / "smoke-tiny.poold.log").is_file()
