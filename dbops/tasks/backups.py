"""Backups: backup, backups, verify-backup, restore. (Issue 3.)"""

from __future__ import annotations

TASKS: list = []
