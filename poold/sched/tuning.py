"""Re-tuning the pool at run time (``PUT /v1/pool``), kept across restarts.

The changes an administrator makes are stored in ``state.dir/pool.json`` and
laid over the config file's ``[pool]`` section at every start, so the file
stays the default and the last change wins. They are validated exactly like
the config file (the same :class:`~poold.config.PoolSettings` model).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from poold.config import PoolSettings
from poold.slots import write_atomic

TUNABLE = ("min_idle", "min_idle_floor", "max_pods", "idle_ttl_s")
"""The ``[pool]`` keys ``PUT /v1/pool`` may change."""
FILE_NAME = "pool.json"


class TuningError(ValueError):
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
        parts = []
        for item in e.errors():
            key = ".".join(str(p) for p in item["loc"])
            message = str(item["msg"]).removeprefix("Value error, ")
            parts.append(f"pool.{key}: {message}" if key else message)
        raise TuningError("; ".join(parts)) from e


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
