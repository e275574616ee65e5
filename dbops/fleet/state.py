"""The fleet run's state file: one JSON document, rewritten whole after every change (temporary
file, fsync, rename), so a run killed at any moment leaves the last complete state. ``--resume``
reads it and skips every member whose status is ``ok``."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from dbops.audit import utcnow

DONE = "ok"


class State:
    def __init__(self, path: Path, doc: dict):
        self.path = path
        self.doc = doc
        self._lock = threading.Lock()

    @classmethod
    def new(cls, path: Path, verb: str, flags: list[str], fleet_file: Path) -> State:
        return cls(
            path,
            {
                "verb": verb,
                "flags": flags,
                "fleet_file": str(fleet_file),
                "started": utcnow(),
                "finished": None,
                "databases": {},
            },
        )

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            return cls(path, json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    @property
    def databases(self) -> dict[str, dict]:
        return self.doc["databases"]

    def completed(self, name: str) -> bool:
        return self.databases.get(name, {}).get("status") == DONE

    def update(self, name: str, **fields) -> None:
        with self._lock:
            self.databases.setdefault(name, {}).update(fields)
            self._write()

    def plan(self, members: dict[str, str]) -> None:
        """Record every member of this run (pending unless the state already knows it)."""
        with self._lock:
            for name, where in members.items():
                self.databases.setdefault(name, {"status": "pending", "where": where})
            self._write()

    def finish(self) -> None:
        with self._lock:
            self.doc["finished"] = utcnow()
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.doc, f, indent=1, sort_keys=True, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
