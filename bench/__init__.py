"""The poold benchmark: ``python -m bench`` (or ``make bench``).

It starts a real ``poold serve`` subprocess per scenario (its own config,
temp state and slot dirs, free port, embedded broker), waits until the pool
is warm, drives it over the public HTTP API only while sampling the pool
(``GET /v1/pool``) and poold's memory (/proc), and writes per-job rows
(``jobs.csv``), the pool over time (``pool.csv``), the run's description
(``results.json``), the summary tables (``summary.txt``) and PNG plots under
``bench/results/<UTC date-time>/``. The scale scenario (``kind =
"kube_scale"``) runs poold's Kubernetes backend and pool against the fake API
server in ``tests/fakekube`` instead (``bench.kubescale``).

Scenarios are TOML files in ``bench/scenarios/`` (see
``bench/scenarios/README.md`` for every key). The summary compares the run
against poold's latency and throughput targets and only reports: a MISS
never makes the benchmark fail.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see :func:`bench.cli.main`."""
    from .cli import main as cli_main  # noqa: PLC0415 - keep `import bench` light

    return cli_main(argv)
