"""Tables for people, stable text for everything else.

At a terminal (stdout is a tty) a table is drawn with rich; otherwise the same rows are
printed as plain fixed-width text, the format scripts and tests have always read. --json
output never comes through here."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def is_terminal() -> bool:
    return sys.stdout.isatty()


def table(
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[str]],
    *,
    notes: dict[int, list[str]] | None = None,
    title: str | None = None,
    styles: dict[int, str] | None = None,
) -> None:
    """``columns``: (header, justify "left"|"right"); ``notes``: extra lines under row i
    (shown as a spanning row at a terminal); ``styles``: a rich style for row i."""
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=title, title_justify="left", header_style="bold", show_edge=False, pad_edge=False
    )
    for header, justify in columns:
        t.add_column(header, justify=justify, overflow="fold")
    for i, row in enumerate(rows):
        t.add_row(*row, style=(styles or {}).get(i))
        for line in (notes or {}).get(i, []):
            t.add_row(*([""] * (len(columns) - 1)), line, style="red")
    Console().print(t)
