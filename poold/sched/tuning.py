"""Re-tuning the pool at run time (``PUT /v1/pool`` and SIGHUP), kept across restarts.

The changes an administrator makes are stored in ``state.dir/pool.json`` and
laid over the config file's ``[pool]`` section at every start, so the file
stays the default and the last change wins. They are validated exactly like
the config file (the same :class:`~poold.config.PoolSettings` model).

SIGHUP re-reads the file's ``[pool]``: a key the file's edit changed is the
later change, so it wins over (and is dropped from) ``pool.json``; a key the
file did not change keeps what ``PUT`` set. After a reload the pool runs with
exactly what a restart would give. Keys outside :data:`TUNABLE` need a
restart: a changed one is named in the log and keeps its running value.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from poold.atomic import write_atomic
from poold.config import PoolSettings, explain
from poold.errors import SchedulerError
from poold.sched.pool import Pool

log = structlog.get_logger(__name__)

TUNABLE = ("min_idle", "min_idle_floor", "max_pods", "idle_ttl_s")
"""The ``[pool]`` keys ``PUT /v1/pool`` and SIGHUP may change at run time."""
FILE_NAME = "pool.json"


class TuningError(SchedulerError, ValueError):
    """A change that cannot be applied; the message names the key."""


def tuned(base: PoolSettings, changes: Mapping[str, Any]) -> PoolSettings:
    """``base`` with ``changes`` applied, validated like the config file."""
    unknown = sorted(set(changes) - set(TUNABLE))
    if unknown:
        raise TuningError(
            f"pool.{unknown[0]} cannot be changed at run time; the keys that can are "
            + ", ".join(f"pool.{k}" for k in TUNABLE)
        )
    try:
        return PoolSettings.model_validate({**base.model_dump(), **changes})
    except ValidationError as e:
        sentences = explain(e, key=lambda loc: "pool." + ".".join(map(str, loc)) if loc else None)
        raise TuningError("; ".join(sentences)) from e


class PoolOverrides:
    """``state.dir/pool.json``: the changes made at run time."""

    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.path = state_dir / FILE_NAME
        self.fsync = fsync

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise TuningError(f"{self.path} cannot be read ({e}); fix or remove it") from e
        if not isinstance(data, dict):
            raise TuningError(f"{self.path} is not a JSON object; fix or remove it")
        return data

    def save(self, changes: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(dict(changes), indent=1).encode(), fsync=self.fsync)


@dataclass(frozen=True)
class Reload:
    """What re-reading the file's ``[pool]`` section changes (see :func:`reloaded`)."""

    settings: PoolSettings
    """What the pool runs with from now on."""
    file: PoolSettings
    """The file's ``[pool]`` as applied: its :data:`TUNABLE` keys, the running
    values of the others (the base of later ``PUT`` changes and reloads)."""
    overrides: dict[str, Any]
    """What ``pool.json`` keeps."""
    changed: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """Keys whose running value changed: (old, new)."""
    replaced: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """``pool.json`` keys the file's edit replaced: (pool.json's value, the file's)."""
    needs_restart: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    """Keys the file changed that cannot change at run time: (running, the file's)."""


def reloaded(*, applied: PoolSettings, read: PoolSettings, running: PoolSettings,
             overrides: Mapping[str, Any]) -> Reload:
    """The pool's settings after the file's ``[pool]`` was read again as ``read``;
    ``applied`` is the file as applied before (:attr:`Reload.file`). Raises
    :class:`TuningError` (naming the key) when the result is not valid."""
    edited = {k for k in TUNABLE if getattr(read, k) != getattr(applied, k)}
    kept = {k: v for k, v in overrides.items() if k not in edited}
    replaced = {k: (v, getattr(read, k)) for k, v in overrides.items() if k in edited}
    file = applied.model_copy(update={k: getattr(read, k) for k in TUNABLE})
    settings = tuned(file, kept)
    restart = {k: (getattr(running, k), getattr(read, k)) for k in type(read).model_fields
               if k not in TUNABLE and getattr(read, k) != getattr(running, k)}
    changed = {k: (getattr(running, k), getattr(settings, k)) for k in TUNABLE
               if getattr(settings, k) != getattr(running, k)}
    return Reload(settings=settings, file=file, overrides=kept, changed=changed,
                  replaced=replaced, needs_restart=restart)


class PoolTuner:
    """The one way the running pool's settings change: ``PUT /v1/pool`` and SIGHUP,
    one at a time (both read and write ``pool.json``)."""

    def __init__(self, *, pool: Pool, file: PoolSettings, overrides: PoolOverrides) -> None:
        self.pool = pool
        self.file = file
        """The config file's ``[pool]`` as applied (the base ``pool.json`` is laid over)."""
        self.overrides = overrides
        self._lock = asyncio.Lock()

    async def put(self, changes: Mapping[str, Any]) -> None:
        """Apply and keep ``changes`` (``PUT /v1/pool``); :class:`TuningError` if invalid."""
        async with self._lock:
            saved = await asyncio.to_thread(self.overrides.load)
            new = tuned(self.file, {**saved, **changes})
            await asyncio.to_thread(self.overrides.save, {**saved, **changes})
            old = self.pool.settings
            self.pool.settings = new
            self.pool.poke()
        log.info("pool re-tuned", changes=dict(changes),
                 was={k: getattr(old, k) for k in changes}, file=str(self.overrides.path))

    async def reload(self, read: PoolSettings) -> Reload:
        """Apply the file's ``[pool]`` as read again (SIGHUP); :class:`TuningError`
        (naming the key) leaves everything as it was."""
        async with self._lock:
            saved = await asyncio.to_thread(self.overrides.load)
            outcome = reloaded(applied=self.file, read=read, running=self.pool.settings,
                               overrides=saved)
            if outcome.replaced:
                await asyncio.to_thread(self.overrides.save, outcome.overrides)
            self.file = outcome.file
            self.pool.settings = outcome.settings
            self.pool.poke()
        return outcome
