"""The compile queue's round-robin order and the compile cache's LRU pruning."""

from __future__ import annotations

import os
from pathlib import Path

from poold.modules.compiler import FairQueue
from poold.runtime.engine import CompileCache, make_engine
from tests.modules.helpers import stored, variant


def test_fair_queue_interleaves_tenants() -> None:
    queue: FairQueue[str] = FairQueue()
    for tenant, item in [("a", "a1"), ("a", "a2"), ("b", "b1"), ("c", "c1"), ("b", "b2")]:
        queue.put(tenant, item)
    taken = []
    while (next_ := queue.take()) is not None:
        taken.append(next_[1])
    assert taken == ["a1", "b1", "c1", "a2", "b2"]


def test_cache_prunes_least_recently_used(tmp_path: Path) -> None:
    """Three artifacts; the oldest is then used by a job (load touches it); pruning to
    two artifacts' room removes the one used longest ago, not the oldest written."""
    cache = CompileCache(tmp_path / "cache")
    shas = []
    for i, tag in enumerate(("old", "middle", "new")):
        wasm, sha = variant(tag)
        assert cache.precompile(sha, stored(tmp_path, wasm))
        os.utime(cache.path(sha, fuel=False), (1_000_000 + i, 1_000_000 + i))
        shas.append(sha)
    old, middle, new = shas
    _, from_cache = cache.load(make_engine(fuel=False), old, tmp_path / f"{old}.wasm",
                               fuel=False)
    assert from_cache
    sizes = [cache.path(s, fuel=False).stat().st_size for s in shas]
    removed = cache.prune(sum(sizes) - min(sizes))
    assert removed == [cache.path(middle, fuel=False)]
    assert cache.path(old, fuel=False).exists() and cache.path(new, fuel=False).exists()
    assert cache.prune(10**9) == []
