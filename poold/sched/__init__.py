"""Scheduling: the fair queue, the pool of workers, and a job's way through them."""
