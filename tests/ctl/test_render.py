"""How tables fit: cut to the terminal's width on a terminal, whole when piped."""

from __future__ import annotations

from poold.ctl.render import Column, table


def test_tables_fit_the_terminal_width() -> None:
    columns = [Column("ID", lambda r: r["id"]),
               Column("ERROR", lambda r: r["error"], shrink=True)]
    records = [{"id": "j-1", "error": "x" * 200}, {"id": "j-22", "error": "short"}]
    lines = table(records, columns=columns, width=40)
    assert all(len(line) <= 40 for line in lines)
    assert lines[1].endswith("…") and lines[2].endswith("short")
    assert table(records, columns=columns)[1].endswith("x" * 200)  # piped: nothing cut
