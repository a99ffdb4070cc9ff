"""docs/metrics.md is the one table of poold's metrics: it and a live daemon's
/metrics must never drift apart (name, type, labels)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families

from poold.daemon import Daemon
from tests.support.daemon import Client
from tests.support.wasm_fixtures import module

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(poold_[a-z_]+)` \| (\w+) \|([^|]*)\| ([^|]+) \|$", re.MULTILINE)


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    table = DOC.read_text().split("## Prometheus", 1)[1]
    rows = {}
    for name, kind, labels, meaning in ROW.findall(table):
        assert name not in rows, f"{name} is in docs/metrics.md twice"
        assert meaning.strip(), f"{name} has no meaning in docs/metrics.md"
        rows[name] = (kind, frozenset(re.findall(r"`(\w+)`", labels)))
    return rows


def _family_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


async def test_the_metrics_table_and_metrics_never_drift(alpha: Client, daemon: Daemon) -> None:
    job = await alpha.run(module("upper"), input=["a"], limits={"fuel": 10**8})
    assert job["state"] == "succeeded", job
    text = await alpha.text("/metrics")
    exposed: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created") or not family.name.startswith("poold_"):
            continue
        labels = {k for s in family.samples for k in s.labels if k not in {"le", "quantile"}}
        exposed[_family_name(family)] = (family.type, labels)
    # families with no sample yet show no labels in the text: take the declared ones
    declared = {
        getattr(m, "_name", "") + ("_total" if getattr(m, "_type", "") == "counter" else ""):
        frozenset(getattr(m, "_labelnames", ()))
        for m in vars(daemon.metrics).values() if hasattr(m, "_labelnames")
    }
    table = documented()
    assert set(table) == set(exposed), (
        f"on /metrics but not in docs/metrics.md: {sorted(set(exposed) - set(table))}; "
        f"in docs/metrics.md but not on /metrics: {sorted(set(table) - set(exposed))}"
    )
    for name, (kind, labels) in table.items():
        assert exposed[name][0] == kind, f"{name} is a {exposed[name][0]}, the doc says {kind}"
        assert declared[name] == labels, f"{name} has labels {sorted(declared[name])}"
        assert exposed[name][1] <= labels, f"{name} shows labels {sorted(exposed[name][1])}"
