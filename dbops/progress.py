"""Progress of long byte streams (dump, restore, drill) with rich: a bar with bytes, rate
and time left on stderr when it is a terminal; nothing otherwise (logs and pipes stay
plain, and --json output is never touched: bars go to stderr)."""

from __future__ import annotations

import os
import sys
import time


def wanted() -> bool:
    """Bars only for a person watching: stderr is a terminal and events are not JSON."""
    from dbops import events

    return sys.stderr.isatty() and not events.json_mode()


class ByteProgress:
    """``update(done)`` as bytes flow; ``close()`` (or ``update(done, final=True)``) ends it.
    ``total`` may be an estimate (the database's size on disk for a dump)."""

    def __init__(self, label: str, total: int | None, enabled: bool | None = None):
        self.enabled = wanted() if enabled is None else enabled
        self.bar = None
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(label, total=total or None)

    def update(self, done: int, final: bool = False) -> None:
        if self.bar is None:
            return
        if final:  # the total was an estimate: end at what was done
            self.bar.update(self.task, total=done, completed=done)
        else:
            self.bar.update(self.task, completed=done)
        if final:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def follow_file(
    proc, src, label: str, total: int, enabled: bool | None = None, every: float = 0.2
) -> None:
    """Until ``proc`` ends: a bar fed by how far it has read ``src`` (a file object whose
    descriptor it shares with us as its stdin: the offset is shared)."""
    bar = ByteProgress(label, total, enabled)
    if bar.bar is None:
        return
    try:
        while proc.poll() is None:
            try:
                bar.update(os.lseek(src.fileno(), 0, os.SEEK_CUR))
            except (OSError, ValueError):
                break
            time.sleep(every)
        bar.update(total)
    finally:
        bar.close()
