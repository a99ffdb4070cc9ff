"""Label and field selectors with the API server's matching rules.

Backends select their pods by label, so the fake has to agree with the real
server on the edge cases a hand-rolled filter gets wrong: ``a!=b`` and
``a notin (...)`` also match objects that lack ``a``; ``in`` needs the label;
``a`` / ``!a`` test presence; terms are ANDed.  Field selectors only allow the
fields the real server indexes (anything else is a 400, as on a cluster).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|>|<|[^\s(),!=<>]+)")
_WORDS = {"in", "notin"}


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector."""

    key: str
    op: str  # one of: exists, !exists, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this term."""
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op in ("gt", "lt"):
            if value is None:
                return False
            try:
                have, want = int(value), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == "gt" else have < want
        raise AssertionError(self.op)


class LabelSelector:
    """A parsed ``labelSelector`` query value (requirements are ANDed)."""

    def __init__(self, text: str | None) -> None:
        self.text = text or ""
        self.requirements = _parse_label_selector(self.text)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether an object with ``labels`` is selected."""
        have = labels or {}
        return all(r.matches(have) for r in self.requirements)

    def __repr__(self) -> str:
        return f"LabelSelector({self.text!r})"


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise bad_request(f"unable to parse requirement: invalid label selector {text!r}")
        out.append(m.group(1))
        pos = m.end()
    return out


def _parse_label_selector(text: str) -> list[Requirement]:
    toks = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def fail(why: str) -> Exception:
        return bad_request(f"unable to parse requirement: {why} in label selector {text!r}")

    while i < len(toks):
        negate = False
        if toks[i] == "!":
            negate = True
            i += 1
        if i >= len(toks) or toks[i] in ("(", ")", ",", "=", "==", "!=", "!"):
            raise fail("expected a key")
        key = toks[i]
        i += 1
        nxt = toks[i] if i < len(toks) else ","
        if negate:
            if nxt != ",":
                raise fail("'!' must be followed by a bare key")
            reqs.append(Requirement(key, "!exists"))
        elif nxt == ",":
            reqs.append(Requirement(key, "exists"))
        elif nxt in ("=", "==", "!="):
            i += 1
            if i < len(toks) and toks[i] not in (",", "(", ")"):
                value = toks[i]
                i += 1
            else:
                value = ""
            reqs.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
        elif nxt in (">", "<"):
            i += 1
            if i >= len(toks):
                raise fail("expected a number")
            reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", (toks[i],)))
            i += 1
        elif nxt in _WORDS:
            i += 1
            if i >= len(toks) or toks[i] != "(":
                raise fail("expected '('")
            i += 1
            values: list[str] = []
            while i < len(toks) and toks[i] != ")":
                if toks[i] != ",":
                    values.append(toks[i])
                i += 1
            if i >= len(toks):
                raise fail("expected ')'")
            i += 1
            if not values:
                raise fail("for 'in', 'notin' operators, values set can't be empty")
            reqs.append(Requirement(key, nxt, tuple(values)))
        else:
            raise fail(f"unexpected {nxt!r}")
        if i < len(toks):
            if toks[i] != ",":
                raise fail(f"expected ',' but got {toks[i]!r}")
            i += 1
            if i >= len(toks):
                raise fail("trailing ','")
    return reqs


FieldGetter = Callable[[Mapping[str, Any]], str]


def _path_getter(path: str) -> FieldGetter:
    parts = path.split(".")

    def get(obj: Mapping[str, Any]) -> str:
        cur: Any = obj
        for p in parts:
            if not isinstance(cur, Mapping):
                return ""
            cur = cur.get(p)
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return get


class FieldSelector:
    """A parsed ``fieldSelector`` (``f=v``, ``f==v``, ``f!=v``, comma-AND)."""

    def __init__(self, text: str | None, allowed: frozenset[str]) -> None:
        self.text = text or ""
        self.terms: list[tuple[FieldGetter, bool, str]] = []
        for raw in filter(None, (t.strip() for t in self.text.split(","))):
            if "!=" in raw:
                field, value = raw.split("!=", 1)
                negate = True
            elif "==" in raw:
                field, value = raw.split("==", 1)
                negate = False
            elif "=" in raw:
                field, value = raw.split("=", 1)
                negate = False
            else:
                raise bad_request(f"invalid selector: '{self.text}'; can't understand '{raw}'")
            field = field.strip()
            if field not in allowed:
                raise bad_request(f"field label not supported: {field}")
            self.terms.append((_path_getter(field), negate, value.strip()))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is selected."""
        return all(
            (get(obj) != value) if neg else (get(obj) == value) for get, neg, value in self.terms
        )

    def __repr__(self) -> str:
        return f"FieldSelector({self.text!r})"
