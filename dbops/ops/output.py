"""The output channels of an operation (as alembic's ``print_stdout``): an op formats its
lines and hands them to ``out`` (what it reports as it goes) and ``warn`` (what went wrong
but did not stop it); the task that calls it chooses where they are printed."""

from __future__ import annotations

import sys
from collections.abc import Callable

Out = Callable[[str], None]


def print_line(line: str) -> None:
    """One line on stdout."""
    print(line, flush=True)


def print_note(line: str) -> None:
    """One line on stderr (notes and warnings that must not mix with a task's stdout)."""
    print(line, file=sys.stderr, flush=True)
