"""The daemon side of the scale scenario, in a process of its own.

``python -m bench.kubedaemon --api URL --pods N --claims M ...`` runs poold's
real :class:`~poold.backends.kubernetes.KubernetesBackend` and
:class:`~poold.sched.pool.Pool` (nothing else of poold: no HTTP API, no Kafka)
against the API server at ``URL``, fills the pool to ``N`` pods, leaves it
alone for ``--idle-s`` seconds, then makes ``M`` claims one after another the
way the scheduler does (``Pool.take_idle`` then ``Pool.claim``, whose fenced
merge PATCH is the round trip to the API server), and writes what it measured
as JSON to ``--out``: every claim's time, whose percentiles the parent
(``bench/kubescale.py``) takes with the bench's one function. Its own CPU time
and memory are this process's, so they are poold's cost of managing the pool
and nothing else's.

It imports poold, the standard library and :mod:`bench.procmem` (itself the
standard library only): nothing else of the bench's weighs on its memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .procmem import self_rss_kib

FILL_SAMPLE_S = 0.1
MAX_FILL_SAMPLES = 4000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes_asyncio.client import Configuration  # noqa: PLC0415

    from poold.backends.kubernetes import KubernetesBackend  # noqa: PLC0415
    from poold.backends.podtemplate import load_template  # noqa: PLC0415
    from poold.config import KubernetesSettings, PoolSettings  # noqa: PLC0415
    from poold.metrics import Metrics  # noqa: PLC0415
    from poold.sched.pool import Pool  # noqa: PLC0415
    from poold.types import JobId  # noqa: PLC0415

    out: dict[str, Any] = {"pods": args.pods, "claims": args.claims,
                           "max_starting": args.max_starting}
    rss_start, _ = self_rss_kib()
    if args.kubeconfig:  # a real API server (bench/kubescale.py, api = "real")
        from kubernetes_asyncio import config as kube_config  # noqa: PLC0415

        configuration = Configuration()
        await kube_config.load_kube_config(config_file=args.kubeconfig,
                                           client_configuration=configuration,
                                           persist_config=False)
    else:
        configuration = Configuration(host=args.api)
        configuration.verify_ssl = False
    settings = KubernetesSettings(namespace="poold", pod_template=Path(args.template),
                                  leader_election=False)
    backend = KubernetesBackend(settings=settings, template=load_template(Path(args.template)),
                                kafka="kafka.bench.invalid:9092", configuration=configuration)
    pool = Pool(
        backend=backend,
        settings=PoolSettings(backend="kubernetes", min_idle=args.pods, max_pods=args.pods,
                              max_starting=args.max_starting, start_timeout_s=args.timeout),
        slots_root=Path(args.slots), metrics=Metrics(),
    )
    fill: list[list[float]] = []
    cpu0, t0 = _cpu(), time.perf_counter()
    await pool.start()
    try:
        async with asyncio.timeout(args.timeout):
            while True:
                f = pool.figures()
                fill.append([round(time.perf_counter() - t0, 3), f["idle"], f["starting"],
                             round(self_rss_kib()[0] / 1024, 1)])
                if f["idle"] >= args.pods:
                    break
                await asyncio.sleep(FILL_SAMPLE_S)
    except TimeoutError:
        out["error"] = f"the pool did not fill within {args.timeout:g} s: {pool.figures()}"
    out["fill_s"] = round(time.perf_counter() - t0, 3)
    out["fill_cpu_s"] = round(_cpu() - cpu0, 3)
    out["fill_curve"] = fill[:: max(1, len(fill) // MAX_FILL_SAMPLES)]
    out["rss_full_mib"] = round(self_rss_kib()[0] / 1024, 1)
    out["figures_full"] = pool.figures()

    cpu1, t1 = _cpu(), time.perf_counter()
    await asyncio.sleep(args.idle_s)
    out["idle_s"] = round(time.perf_counter() - t1, 3)
    out["idle_cpu_s"] = round(_cpu() - cpu1, 3)

    take_ms: list[float] = []
    claim_ms: list[float] = []
    lost = 0
    cpu2, t2 = _cpu(), time.perf_counter()
    for i in range(args.claims if "error" not in out else 0):
        a = time.perf_counter()
        worker = pool.take_idle()
        b = time.perf_counter()
        if worker is None:
            out["error"] = f"no idle worker for claim {i}: {pool.figures()}"
            break
        won = await pool.claim(worker, JobId(f"j-bench-{i:05d}"))
        c = time.perf_counter()
        take_ms.append((b - a) * 1000)
        claim_ms.append((c - a) * 1000)
        lost += not won
    claims_s = time.perf_counter() - t2
    out["claims_s"] = round(claims_s, 3)
    out["claims_cpu_s"] = round(_cpu() - cpu2, 3)
    out["claims_lost"] = lost
    out["claim_ms"] = [round(x, 3) for x in claim_ms]
    out["take_idle_ms"] = [round(x, 4) for x in take_ms]
    out["claim_max_ms"] = round(max(claim_ms), 3) if claim_ms else None
    out["claims_per_s"] = round(len(claim_ms) / claims_s, 1) if claims_s > 0 else None
    rss, hwm = self_rss_kib()
    out["rss_start_mib"] = round(rss_start / 1024, 1)
    out["rss_end_mib"] = round(rss / 1024, 1)
    out["rss_peak_mib"] = round(hwm / 1024, 1)
    out["cpu_total_s"] = round(_cpu() - cpu0, 3)
    out["figures_end"] = pool.figures()
    # leave the pods (as a restarting daemon does): deleting 1,000 is not what is measured
    await pool.stop(delete_workers=False)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api", help="URL of the fake API server (no credentials)")
    p.add_argument("--kubeconfig", help="a real API server's kubeconfig instead of --api")
    p.add_argument("--pods", type=int, required=True)
    p.add_argument("--claims", type=int, required=True)
    p.add_argument("--max-starting", type=int, required=True)
    p.add_argument("--idle-s", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--template", required=True)
    p.add_argument("--slots")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="poold-bench-kube-slots-") as tmp:
        if not args.slots:
            args.slots = tmp
        result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
