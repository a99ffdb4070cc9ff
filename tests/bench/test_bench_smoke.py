"""The benchmark end to end on a tiny scenario: a real poold subprocess, 5 noop jobs,
the pool sampler, the tables and the plots.

The real ``bench/`` package is loaded from its path under another name (see
``loader.py``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import bench

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


@pytest.mark.timeout(60)
def test_tiny_scenario_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
        # what the job cost, from the record's usage
        assert float(r["usage_cpu_ms"]) > 0
        assert int(r["usage_memory_peak_bytes"]) >= 64 * 1024
        assert int(r["usage_rss_peak_bytes"]) > 0
        assert r["usage_fuel_consumed"] == ""  # no limits.fuel

    summary = (run / "summary.txt").read_text(encoding="utf-8")
    assert "smoke-tiny" in summary
    assert "smoke-tiny" in printed
    assert "warm submit-to-start p50" in summary

    data = json.loads((run / "results.json").read_text(encoding="utf-8"))
    (only,) = data["scenarios"]
    assert only["definition"]["name"] == "smoke-tiny"
    assert only["summaries"][0]["jobs"] == 5 and only["summaries"][0]["errors"] == 0
    assert only["daemon"]["exit_code"] is not None
    assert data["machine"]["cores"] >= 1
    assert (run / "logs" / "smoke-tiny.poold.log").is_file()

    # the pool over time: GET /v1/pool rows and memory rows, in results.json and pool.csv
    samples = only["pool_samples"]
    assert any(s["idle"] != "" for s in samples), samples
    assert any(s["rss_mib"] != "" and float(s["rss_mib"]) > 0 for s in samples), samples
    with (run / "pool.csv").open(newline="", encoding="utf-8") as f:
        pool_rows = list(csv.DictReader(f))
    assert len(pool_rows) == len(samples)
    assert {r["scenario"] for r in pool_rows} == {"smoke-tiny"}
    assert [p["phase"] for p in only["phases"]][:2] == ["setup", "measure"]
    summary_row = only["summaries"][0]
    assert summary_row["rss_mean_mib"] and summary_row["rss_mean_mib"] > 0
    assert "where submit-to-start goes" in summary
    assert "what each job cost" in summary
    assert summary_row["cpu_p50"] > 0 and summary_row["rss_p50"] > 0

    # the plots, next to the CSV, real PNGs
    for name in ("latency-cdf.png", "timeline-smoke-tiny.png"):
        png = run / name
        assert png.is_file(), f"{name} missing; plots: {data['plots']}"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(data["plots"]) >= {"latency-cdf.png", "timeline-smoke-tiny.png"}
