"""Asking before a step that changes the database — one rule for every task:

- ``--yes`` (or the task's explicit acceptance flag) answers the question;
- at a terminal the operator is asked and must type the expected word;
- with no terminal and no ``--yes`` the task refuses before touching anything
  (in production too: ENVIRONMENT=production is named in the message).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dbops.config import Settings
from dbops.lifecycle import Refused


def interactive() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(
    settings: Settings,
    question: str,
    *,
    yes: bool,
    state: str,
    next_command: str,
    expect: str = "yes",
    flag: str = "--yes",
    ask: Callable[[str], bool] | None = None,
) -> None:
    if yes:
        return
    if not interactive():
        where = (
            "ENVIRONMENT=production and no terminal to confirm on"
            if settings.is_production
            else "no terminal to confirm on"
        )
        raise Refused(
            f"{where}: add {flag} to proceed without a prompt",
            state=state,
            next_command=next_command,
        )
    prompt = f"{question}\nType '{expect}' to continue: "
    ok = ask(prompt) if ask else _typed(prompt) == expect
    if not ok:
        raise Refused("not confirmed", state=state)


def _typed(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    try:
        return input().strip()
    except EOFError:
        return ""
