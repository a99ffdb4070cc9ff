"""Load the real ``bench/`` package under another name.

``tests/bench`` is itself a package named ``bench`` for pytest (``tests/`` is
on ``sys.path``), so ``import bench`` would find this folder; the benchmark
is loaded from its path as ``poold_bench_under_test`` instead, and its
modules (which import each other relatively) as its submodules.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
NAME = "poold_bench_under_test"


def load_bench(submodule: str | None = None) -> ModuleType:
    if NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            NAME, REPO / "bench" / "__init__.py",
            submodule_search_locations=[str(REPO / "bench")],
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[NAME] = module
        spec.loader.exec_module(module)
    if submodule is None:
        return sys.modules[NAME]
    return importlib.import_module(f"{NAME}.{submodule}")
