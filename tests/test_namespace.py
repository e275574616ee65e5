"""The invoke namespace is built from the task modules (Collection.from_module), flat."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_every_task_is_at_the_top_level_under_its_cli_name():
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "--list", "--list-format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["collections"] == []  # no sub-collection: no schema.migrate
    names = {t["name"] for t in listing["tasks"]}
    assert {
        "up",
        "down",
        "psql",
        "settings",
        "current",
        "history",
        "heads",
        "migrate",
        "rollback",
        "stamp",
        "check",
        "backup",
        "backups",
        "verify-backup",
        "restore",
        "recover",
        "doctor",
    } <= names
