"""Unit tests for the pure helpers: expansion, command mapping, patches, selectors."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from .errors import StatusError
from .patch import json_patch, merge_patch, strategic_merge_patch
from .podspec import expand, map_command
from .selectors import FieldSelector, LabelSelector

pytestmark = [pytest.mark.timeout(30)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "1-2"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("a$b", "a$b"),
        ("$(A", "$(A"),
        ("", ""),
    ],
)
def test_expand(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_map_command_rules() -> None:
    py = sys.executable
    assert map_command(None, "poold:1", ["poold", "agent"], ["--x"]) == [
        py,
        "-m",
        "poold",
        "agent",
        "--x",
    ]
    assert map_command(None, "img", ["/usr/local/bin/poold", "agent"], []) == [
        py,
        "-m",
        "poold",
        "agent",
    ]
    assert map_command(None, "ghcr.io/x/poold:1.2", [], ["agent"]) == [py, "-m", "poold", "agent"]
    # A container whose command is a real local file runs as written.
    assert map_command(None, "poold:1", [py, "-c", "pass"], []) == [py, "-c", "pass"]
    table = {"registry/agent:v1": ["/bin/true"]}
    assert map_command(table, "registry/agent:v1", [], ["a"]) == ["/bin/true", "a"]

    def fn(image: str, argv: list[str]) -> list[str]:
        return [image, *argv]

    assert map_command(fn, "i", ["c"], ["a"]) == ["i", "c", "a"]


def test_strategic_merge_merges_containers_by_name() -> None:
    spec: Any = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}
    patched = strategic_merge_patch(spec, {"containers": [{"name": "b", "image": "2"}]})
    assert patched == {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}
    deleted = strategic_merge_patch(spec, {"containers": [{"name": "a", "$patch": "delete"}]})
    assert deleted == {"containers": [{"name": "b", "image": "1"}]}
    # A JSON merge patch replaces lists instead.
    assert merge_patch(spec, {"containers": []}) == {"containers": []}


def test_json_patch_ops_and_escaping() -> None:
    doc: Any = {"metadata": {"labels": {"a/b": "1"}}, "list": [1, 2]}
    ops = [
        {"op": "test", "path": "/metadata/labels/a~1b", "value": "1"},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "move", "from": "/list/0", "path": "/first"},
        {"op": "copy", "from": "/first", "path": "/again"},
    ]
    assert json_patch(doc, ops) == {
        "metadata": {"labels": {"a/b": "1"}},
        "list": [2, 3],
        "first": 1,
        "again": 1,
    }
    with pytest.raises(StatusError) as info:
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    assert info.value.code == 422


def test_selector_edge_cases() -> None:
    assert LabelSelector("").matches({})
    assert LabelSelector("a in (x, y),!b").matches({"a": "y"})
    assert not LabelSelector("a in (x, y),!b").matches({"a": "y", "b": ""})
    assert LabelSelector("n>3").matches({"n": "4"})
    with pytest.raises(StatusError):
        LabelSelector("a notin ()")
    fields = FieldSelector("spec.nodeName=", frozenset({"spec.nodeName"}))
    assert fields.matches({"spec": {}})
    assert not fields.matches({"spec": {"nodeName": "n"}})
