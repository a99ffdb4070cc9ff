"""Partition leases: each running job owns one partition of its tenant's topics.

A partition is leased when a job gets a worker and returned when the job
ends, so a job's records are a plain offset range and partitions are reused
without creating or deleting topics.
"""

from __future__ import annotations

from poold.errors import DataError
from poold.types import TenantName


class NoPartitionFree(DataError):
    """Every partition is leased; one frees when a job ends."""

    retriable = True


class PartitionLeases:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._free: dict[TenantName, list[int]] = {}
        self.leased = 0

    def acquire(self, tenant: TenantName) -> int:
        free = self._free.setdefault(tenant, list(range(self.partitions - 1, -1, -1)))
        if not free:
            raise NoPartitionFree(f"all {self.partitions} partitions of {tenant} are leased")
        self.leased += 1
        return free.pop()

    def take(self, tenant: TenantName, partition: int) -> None:
        """Mark a partition leased by a job found running at start-up."""
        free = self._free.setdefault(tenant, list(range(self.partitions - 1, -1, -1)))
        if partition in free:
            free.remove(partition)
            self.leased += 1

    def release(self, tenant: TenantName, partition: int) -> None:
        free = self._free.setdefault(tenant, [])
        if partition not in free:
            free.append(partition)
            self.leased -= 1
