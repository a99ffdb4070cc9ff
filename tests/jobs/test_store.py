"""The in-memory job store behind the journal: pages of a tenant's jobs."""

from __future__ import annotations

from poold.jobs.model import Job, Limits
from poold.jobs.store import MemoryJobStore
from poold.types import JobId, ModuleHash, TenantName


def job(i: int, tenant: str = "alpha") -> Job:
    return Job(id=JobId(f"j-{i:032x}"), tenant=TenantName(tenant), module=ModuleHash("a" * 64),
               module_size=10, limits=Limits(5.0, 64, None))


async def test_pages_run_newest_first_and_a_cursor_that_is_not_there_ends_them() -> None:
    store = MemoryJobStore()
    for i in range(5):
        await store.put(job(i))
    await store.put(job(99, "beta"))
    ids = [j.id for j in store.list(TenantName("alpha"), limit=2)]
    assert ids == [job(4).id, job(3).id]
    ids = [j.id for j in store.list(TenantName("alpha"), limit=2, before=job(3).id)]
    assert ids == [job(2).id, job(1).id]
    # another tenant's job, or one that expired, as the cursor: an empty page, not an error
    assert store.list(TenantName("alpha"), limit=2, before=job(99, "beta").id) == []
    assert store.list(TenantName("alpha"), limit=2, before=JobId("j-" + "f" * 32)) == []
