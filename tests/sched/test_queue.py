"""Per-tenant fairness of the queue."""

from __future__ import annotations

from poold.sched.queue import FairQueue
from poold.types import JobId, TenantName

A, B, C = TenantName("a"), TenantName("b"), TenantName("c")


def drain(q: FairQueue, eligible=lambda t: True) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    while (item := q.pop(eligible)) is not None:
        out.append(item[1])
    return out


def test_a_burst_does_not_starve_others() -> None:
    q = FairQueue()
    for i in range(100):
        q.push(A, JobId(f"a{i}"))
    q.push(B, JobId("b0"))
    q.push(C, JobId("c0"))
    order = drain(q)
    assert order.index("b0") <= 2 and order.index("c0") <= 2
    assert [j for j in order if j.startswith("a")] == [f"a{i}" for i in range(100)]


def test_tenants_take_turns() -> None:
    q = FairQueue()
    for i in range(3):
        q.push(A, JobId(f"a{i}"))
        q.push(B, JobId(f"b{i}"))
    assert drain(q) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_tenant_at_quota_is_skipped_not_blocking() -> None:
    q = FairQueue()
    q.push(A, JobId("a0"))
    q.push(B, JobId("b0"))
    assert drain(q, lambda t: t != A) == ["b0"]
    assert q.size(A) == 1
    assert drain(q) == ["a0"]


def test_push_front_and_remove() -> None:
    q = FairQueue()
    q.push(A, JobId("a1"))
    q.push_front(A, JobId("a0"))
    q.push(A, JobId("a2"))
    assert q.remove(A, JobId("a2"))
    assert not q.remove(A, JobId("zz"))
    assert drain(q) == ["a0", "a1"]
    assert len(q) == 0


def test_demand_counts_only_startable_jobs() -> None:
    q = FairQueue()
    for i in range(5):
        q.push(A, JobId(f"a{i}"))
    q.push(B, JobId("b0"))
    assert q.demand(lambda t: 2 if t == A else 0) == 2


def test_a_job_back_from_waiting_goes_to_its_place_in_line() -> None:
    """A runtime job that waited out of line for its interpreter's compilation goes back
    ahead of its tenant's jobs submitted after it, behind those submitted before."""
    q = FairQueue()
    for i in (0, 2, 3):
        q.push(A, JobId(f"a{i}"))
    q.insert(A, JobId("a1"), before=lambda j: int(j[1:]) > 1)
    q.insert(B, JobId("b0"), before=lambda j: False)  # a tenant with nothing queued
    q.insert(A, JobId("a9"), before=lambda j: int(j[1:]) > 9)  # none later: at the end
    assert drain(q) == ["a0", "b0", "a1", "a2", "a3", "a9"]
