"""How the command line prints records: ``-o table|wide|json|yaml``.

Tables are for people: on a terminal their widths fit it (the widest
shrinkable column is cut with ``…``); piped, nothing is cut, so ``awk`` and
``grep`` see whole values. JSON and YAML print the records exactly as the
server sent them, for scripts.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import yaml

from poold.timestamps import parse_rfc3339

FORMATS = ("table", "wide", "json", "yaml")

Record = dict[str, Any]


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Record], str]
    #: only in ``-o wide``
    wide: bool = False
    #: may be cut to fit the terminal
    shrink: bool = False


def output_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o", "--output", "fmt", type=click.Choice(FORMATS), default="table",
        show_default=True, help="Output format: table (wide: more columns), json or yaml.",
    )(f)


def on_terminal() -> bool:
    return sys.stdout.isatty()


def emit(records: Sequence[Record] | Record, *, fmt: str, columns: Sequence[Column],
         header: bool = True) -> None:
    """Print one record (a dict) or a list of them in the chosen format."""
    if fmt == "json":
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    if fmt == "yaml":
        click.echo(yaml.safe_dump(records, sort_keys=False, allow_unicode=True).rstrip("\n"))
        return
    rows = [records] if isinstance(records, dict) else list(records)
    for line in table(rows, columns=columns, wide=fmt == "wide", header=header):
        click.echo(line)


def table(rows: Sequence[Record], *, columns: Sequence[Column], wide: bool = False,
          header: bool = True, width: int | None = None) -> list[str]:
    shown = [c for c in columns if wide or not c.wide]
    cells = [[_clean(c.value(r)) for c in shown] for r in rows]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in
              enumerate(shown)]
    if width is None and on_terminal():
        width = shutil.get_terminal_size((120, 24)).columns
    if width is not None:
        _fit(widths, shown, width)
    lines = []
    every = ([[c.header for c in shown]] if header else []) + cells
    for row in every:
        parts = [_cut(v, w) for v, w in zip(row, widths, strict=True)]
        lines.append("   ".join(p.ljust(w) for p, w in zip(parts, widths, strict=True)).rstrip())
    return lines


def _fit(widths: list[int], columns: Sequence[Column], width: int) -> None:
    """Shrink the widest shrinkable columns until the row fits ``width``."""
    gaps = 3 * (len(widths) - 1)
    while sum(widths) + gaps > width:
        candidates = [i for i, c in enumerate(columns) if c.shrink and widths[i] > 8]
        if not candidates:
            return
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] = max(8, widths[widest] - (sum(widths) + gaps - width))


def _cut(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _clean(value: str) -> str:
    """One line per cell: a module's error text may hold newlines or control bytes."""
    return "".join(ch if ch.isprintable() else " " for ch in value)


# -- cell formats ------------------------------------------------------------------


def text(value: Any) -> str:
    return "" if value is None else str(value)


def millis(value: Any) -> str:
    if value is None:
        return ""
    ms = float(value)
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms / 60_000:.1f}m"


def size(value: Any) -> str:
    if value is None:
        return ""
    n = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}GiB"


def age(value: Any, *, now: datetime | None = None) -> str:
    """``…Z`` time as kubectl's AGE: ``45s``, ``12m``, ``3h``, ``2d``."""
    if not isinstance(value, str) or not value:
        return ""
    when = parse_rfc3339(value)
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds // span}{unit}"
    return f"{seconds}s"
