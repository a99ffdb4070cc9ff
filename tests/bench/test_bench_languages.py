"""The languages group end to end on a small scenario: the C program compiled to wasm
on a real poold against the same C compiled natively and started per job, outputs
compared, the table, languages.csv and results.json (the python variants need
`make runtimes` and minutes of compiling: tests/runtime/test_python.py covers them)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

import bench

SCENARIO = """\
kind = "languages"
name = "lang-tiny"
workload = "wordrev"
variants = ["wasm", "native"]
input_records = 50
jobs = 2
job_timeout_s = 30
"""


@pytest.mark.timeout(120)
def test_languages_scenario_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        why = "no C compiler for the native baseline (apt-get install gcc libc6-dev)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    scenario = tmp_path / "lang-tiny.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    results = tmp_path / "results"

    code = bench.main([str(scenario), "--results-dir", str(results)])

    captured = capsys.readouterr()
    assert code == 0, captured
    (run,) = list(results.iterdir())
    with (run / "languages.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {(r["variant"], r["phase"]) for r in rows} == {
        ("wasm", "warmup"), ("wasm", "measure"), ("native", "warmup"), ("native", "measure")}
    assert len(rows) == 6, rows
    assert {r["state"] for r in rows} == {"succeeded"}, rows
    assert {r["output_ok"] for r in rows} == {"True"}, rows  # wasm's output == native's
    for r in rows:
        assert float(r["start_ms"]) > 0 and float(r["run_ms"]) >= 0 and float(r["cpu_ms"]) > 0
        assert int(r["rss_peak_bytes"]) > 0
    assert all(r["peak_memory_bytes"] for r in rows if r["variant"] == "wasm")

    summary = (run / "summary.txt").read_text(encoding="utf-8")
    assert "languages:" in summary and "lang-tiny" in summary
    assert "wasm_over_native_run" in summary
    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    (lang,) = data["languages"]
    assert lang["failure"] is None
    assert [r["variant"] for r in lang["summary"]] == ["wasm", "native"]
    assert lang["ratios"]["wasm_over_native_run"] is not None
    wasm = next(v for v in lang["variants"] if v["variant"] == "wasm")
    assert wasm["compile_s"] is not None and wasm["load_ms"] is not None
    assert "languages.png" in data["plots"]
    assert (run / "languages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
