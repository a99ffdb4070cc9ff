"""What a re-read of the config file's ``[pool]`` (SIGHUP) does to the running pool
and to what ``PUT /v1/pool`` kept in ``pool.json``: the rule on its own."""

from __future__ import annotations

from typing import Any

import pytest

from poold.config import PoolSettings
from poold.sched.tuning import TuningError, reloaded, tuned


def pool(**keys: Any) -> PoolSettings:
    return PoolSettings.model_validate({"min_idle": 1, "max_pods": 4, **keys})


def test_a_key_the_file_did_not_edit_keeps_what_put_set() -> None:
    applied = pool()
    running = tuned(applied, {"min_idle": 3})
    outcome = reloaded(applied=applied, read=pool(max_pods=6), running=running,
                       overrides={"min_idle": 3})
    assert (outcome.settings.min_idle, outcome.settings.max_pods) == (3, 6)
    assert outcome.overrides == {"min_idle": 3} and outcome.replaced == {}
    assert outcome.changed == {"max_pods": (4, 6)}


def test_a_key_the_file_edited_wins_over_put_and_leaves_pool_json() -> None:
    applied = pool()
    running = tuned(applied, {"min_idle": 3, "idle_ttl_s": 60})
    outcome = reloaded(applied=applied, read=pool(min_idle=2), running=running,
                       overrides={"min_idle": 3, "idle_ttl_s": 60})
    assert outcome.settings.min_idle == 2 and outcome.settings.idle_ttl_s == 60
    assert outcome.overrides == {"idle_ttl_s": 60}
    assert outcome.replaced == {"min_idle": (3, 2)}
    assert outcome.changed == {"min_idle": (3, 2)}


def test_the_same_file_again_changes_nothing() -> None:
    applied = pool(min_idle="auto", min_idle_floor=2)
    outcome = reloaded(applied=applied, read=applied, running=applied, overrides={})
    assert outcome.settings == applied and outcome.changed == {} and outcome.needs_restart == {}


def test_keys_that_need_a_restart_keep_their_running_value_and_are_named() -> None:
    applied = pool()
    read = pool(reuse="tenant", max_starting=2, min_idle=2)
    outcome = reloaded(applied=applied, read=read, running=applied, overrides={})
    assert outcome.settings.reuse == "never" and outcome.settings.max_starting == 8
    assert outcome.settings.min_idle == 2
    assert outcome.needs_restart == {"reuse": ("never", "tenant"), "max_starting": (8, 2)}
    # the file as applied keeps the running value too: a later PUT does not slip it in
    assert outcome.file.reuse == "never"
    assert tuned(outcome.file, {"min_idle": 1}).reuse == "never"


def test_a_result_that_is_not_valid_is_refused_naming_the_key() -> None:
    applied = pool(max_pods=8)
    running = tuned(applied, {"min_idle": 6})
    # the file lowers max_pods below what PUT set for min_idle
    with pytest.raises(TuningError, match=r"pool\.min_idle \(6\) exceeds pool\.max_pods"):
        reloaded(applied=applied, read=pool(max_pods=4), running=running,
                 overrides={"min_idle": 6})
