"""The one error type operations raise: what went wrong, what state the database
is in, and the exact next command. Tasks print it and exit non-zero."""

from __future__ import annotations

import shlex


def command(*argv: object, why: str | None = None) -> str:
    """A command as printed after ``next:`` (or anywhere dbops shows one to paste): built from
    argv with shell quoting (a path with a space or ``$(...)`` stays one inert word), and any
    explanation after ``#``, so the line runs as printed."""
    line = shlex.join(str(a) for a in argv)
    return f"{line}   # {why}" if why else line


def as_command(text: str) -> str:
    """An older next-command text in the runnable form: ``cmd   (why)`` -> ``cmd   # why``
    (the explanation of a command was written in parentheses, which a shell reads as a
    subshell). Text already in the form, or with no such explanation, is returned as is."""
    if "#" in text or "   (" not in text:
        return text
    cmd, _, why = text.partition("   (")
    depth, close = 1, None
    for i, ch in enumerate(why):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            close = i
            break
    if close is None:
        return text
    rest = why[close + 1 :].strip()
    why = why[:close] + ("" if not rest or rest[0] in ",.;:" else " ") + rest
    return f"{cmd.rstrip()}   # {why.strip()}"


class OpsError(Exception):
    def __init__(
        self,
        message: str,
        *,
        state: str | None = None,
        next_command: str | None = None,
        details: list[str] | None = None,
        exit_code: int = 1,
    ):
        super().__init__(message)
        self.message = message
        self.state = state
        self.next_command = next_command
        self.details = details or []
        self.exit_code = exit_code

    def render(self) -> str:
        lines = [f"error: {self.message}"]
        lines += [f"  {d}" for d in self.details]
        if self.state:
            lines.append(f"database state: {self.state}")
        if self.next_command:
            lines.append(f"next: {as_command(self.next_command)}")
        return "\n".join(lines)


class ConfigError(OpsError):
    """Bad or missing configuration: nothing was touched."""
