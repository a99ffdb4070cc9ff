"""``make mutate``: mutation testing with cosmic-ray, within a time budget.

For each package (``poold/api``, ``poold/sched``, ...) cosmic-ray plants one
small bug at a time (a flipped comparison, a removed ``not``, a loop that runs
zero times, a caught exception that no longer matches, ...) and runs that
package's fast test selection; a mutant the tests still pass with *survived*.

The mutants are planted in a scratch copy of the work tree (``.mutate/tree``),
never in the tree itself: a run cut short by its budget may leave a mutated
file behind, and the copy is refreshed before each package. Tests run with the
project's own ``.venv`` and ``PYTHONPATH`` pointing at the copy, so processes
the tests start (daemons, agents) import the mutated code too.

cosmic-ray takes the pending mutants in random order, so a run cut short by
its budget is a random sample of the package's mutants; the report says how
many ran. Not part of CI: see docs/testing.md.

    .venv/bin/python tests/mutation/run.py --cosmic-ray .venv-mutate/bin \\
        --modules poold/jobs,poold/api --budget-s 1200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

SELECTIONS: dict[str, list[str]] = {
    # package -> its fast test selection (seconds per run, not the whole suite)
    "poold/api": ["tests/api/test_bad_input.py", "tests/api/test_auth.py",
                  "tests/api/test_artifact_paths.py"],
    "poold/jobs": ["tests/jobs", "tests/api/test_artifact_paths.py"],
    "poold/sched": ["tests/sched"],
    "poold/modules": ["tests/api/test_bad_input.py", "tests/api/test_modules_list.py",
                      "tests/modules/test_runtime_pruning.py"],
    "poold/runtime": ["tests/runtime"],
}

KEPT_BINARY = ("Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "FloorDiv_Mul", "Mod_FloorDiv")
EXCLUDED_OPERATORS = [
    # every binary-operator swap but the likely ones: `|` is mostly in type hints,
    # and Add -> Pow, LShift -> BitXor and the like are noise
    r"core/ReplaceBinaryOperator_(?!(" + "|".join(KEPT_BINARY) + r")$)",
    # comparison swaps that are not a negation or an off-by-one
    r"core/ReplaceComparisonOperator_(Eq_(Lt|LtE|Gt|GtE|Is|IsNot)"
    r"|NotEq_(Lt|LtE|Gt|GtE|Is|IsNot)|(Lt|LtE|Gt|GtE)_(Eq|NotEq|Is|IsNot)"
    r"|Lt_Gt$|Gt_Lt$|LtE_GtE|GtE_LtE|Is_(Eq|NotEq|Lt|LtE|Gt|GtE)|IsNot_(Eq|NotEq|Lt|LtE|Gt|GtE))",
    r"core/ReplaceUnaryOperator_(UAdd|USub|Invert)_",
    r"core/Variable(Replacer|Inserter)",
]


@dataclass
class Outcome:
    module: str
    mutants: int
    ran: int
    killed: int
    survived: list[dict[str, Any]]
    incompetent: int
    baseline_s: float
    timeout_s: float
    spent_s: float


def copy_tree(target: Path) -> None:
    """The tracked files of the work tree (as they are on disk) into ``target``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)


def config(path: Path, *, module: str, command: str, timeout: float) -> None:
    excluded = ", ".join(json.dumps(e) for e in EXCLUDED_OPERATORS)
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(module)}\n"
        f"timeout = {timeout}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n"
        f"[cosmic-ray.filters.operators-filter]\nexclude-operators = [{excluded}]\n"
    )


def run_module(module: str, *, tree: Path, out: Path, cr: Path, budget_s: float) -> Outcome:
    name = module.replace("/", "-")
    python = ROOT / ".venv" / "bin" / "python"
    selection = SELECTIONS[module]
    command = f"{python} -m pytest -x -q -p no:cacheprovider " + " ".join(selection)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("CI", None)

    started = time.monotonic()
    baseline = subprocess.run(command.split(), cwd=tree, env=env, capture_output=True,
                              check=False)
    baseline_s = time.monotonic() - started
    if baseline.returncode != 0:
        sys.exit(f"{module}: the test selection fails without any mutant:\n"
                 + baseline.stdout.decode()[-3000:])
    timeout = round(max(60.0, 3 * baseline_s + 30), 1)

    cfg, db = out / f"{name}.toml", out / f"{name}.sqlite"
    db.unlink(missing_ok=True)
    config(cfg, module=module, command=command, timeout=timeout)
    subprocess.run([cr / "cosmic-ray", "init", cfg, db], cwd=tree, env=env, check=True)
    subprocess.run([cr / "cr-filter-operators", db, cfg], cwd=tree, env=env, check=True)

    remaining = budget_s - (time.monotonic() - started)
    log = (out / f"{name}.log").open("wb")
    proc = subprocess.Popen([cr / "cosmic-ray", "exec", cfg, db], cwd=tree, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=max(remaining, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the test run under way goes with it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        log.close()
        copy_tree(tree)  # undo a mutant left in place by the cut
    return summarise(module, db, cr=cr, baseline_s=baseline_s, timeout=timeout,
                     spent_s=time.monotonic() - started)


def summarise(module: str, db: Path, *, cr: Path, baseline_s: float, timeout: float,
              spent_s: float) -> Outcome:
    dump = subprocess.run([cr / "cosmic-ray", "dump", db], check=True,
                          capture_output=True).stdout.decode()
    mutants = ran = killed = incompetent = 0
    survived = []
    for line in filter(None, dump.splitlines()):
        item, result = json.loads(line)
        if result is not None and result.get("worker_outcome") == "skipped":
            continue
        mutants += 1
        if result is None or result.get("worker_outcome") != "normal":
            continue
        ran += 1
        outcome = result.get("test_outcome")
        if outcome == "killed":
            killed += 1
        elif outcome == "incompetent":
            incompetent += 1
        else:
            mutation = item["mutations"][0]
            survived.append({**mutation, "diff": result.get("diff", "")})
    survived.sort(key=lambda m: (m["module_path"], m["start_pos"]))
    return Outcome(module, mutants, ran, killed, survived, incompetent, baseline_s, timeout,
                   spent_s)


def report(outcomes: list[Outcome], path: Path) -> str:
    lines = ["# make mutate: report", ""]
    load = os.getloadavg()
    lines.append(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    lines.append("")
    lines.append("| package | mutants | ran | killed | survived | incompetent | score "
                 "| baseline s | per-mutant timeout s | time s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        judged = o.killed + len(o.survived)
        score = f"{100 * o.killed / judged:.1f}%" if judged else "-"
        lines.append(f"| {o.module} | {o.mutants} | {o.ran} | {o.killed} | {len(o.survived)} "
                     f"| {o.incompetent} | {score} | {o.baseline_s:.0f} | {o.timeout_s:g} "
                     f"| {o.spent_s:.0f} |")
    for o in outcomes:
        lines += ["", f"## Survivors in {o.module} ({len(o.survived)})", ""]
        for m in o.survived:
            lines.append(f"### {m['module_path']}:{m['start_pos'][0]} {m['operator_name']} "
                         f"(in {m.get('definition_name')})")
            lines += ["", "```diff", m["diff"].strip(), "```", ""]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    counts = Counter(m["operator_name"] for o in outcomes for m in o.survived)
    return text.split("## Survivors")[0] + f"survivors by operator: {dict(counts)}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cosmic-ray", type=Path, required=True,
                        help="the bin folder holding cosmic-ray (its own venv)")
    parser.add_argument("--modules", default=",".join(SELECTIONS),
                        help=f"comma-separated, from: {', '.join(SELECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=3600,
                        help="wall-clock seconds for the whole run, shared evenly")
    parser.add_argument("--out", type=Path, default=ROOT / ".mutate")
    args = parser.parse_args()
    modules = [m.strip().rstrip("/") for m in args.modules.split(",") if m.strip()]
    unknown = [m for m in modules if m not in SELECTIONS]
    if unknown:
        parser.error(f"unknown --modules {unknown}; known: {', '.join(SELECTIONS)}")
    out: Path = args.out.resolve()
    tree = out / "tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    copy_tree(tree)
    outcomes = []
    deadline = time.monotonic() + args.budget_s
    for i, module in enumerate(modules):
        share = (deadline - time.monotonic()) / (len(modules) - i)
        print(f"mutate: {module}, {share:.0f} s, tests: {' '.join(SELECTIONS[module])}",
              flush=True)
        outcomes.append(run_module(module, tree=tree, out=out, cr=args.cosmic_ray.absolute(),
                                   budget_s=share))
    print(report(outcomes, out / "report.md"))
    print(f"survivors with their diffs: {out / 'report.md'}")


if __name__ == "__main__":
    main()
