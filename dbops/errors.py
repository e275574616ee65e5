"""The one error type operations raise: what went wrong, what state the database
is in, and the exact next command. Tasks print it and exit non-zero."""

from __future__ import annotations


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
            lines.append(f"next: {self.next_command}")
        return "\n".join(lines)


class ConfigError(OpsError):
    """Bad or missing configuration: nothing was touched."""
