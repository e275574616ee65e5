"""The audit record: one JSON object per line in DBOPS_AUDIT_LOG (default
<backup dir>/audit.jsonl), owned by the host. Every schema-changing operation
(migrate, rollback, stamp, restore, recover --apply) appends one record:
who, when, what, from -> to, the backup used, the result, the duration."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from dbops import safefile
from dbops.config import Settings, operator


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def masked_json(record: dict, secrets: list[str]) -> str:
    """One JSON line with every form of every secret replaced (as JSON escapes it)."""
    line = json.dumps(record, default=str, sort_keys=True)
    for secret in secrets:
        line = line.replace(json.dumps(secret)[1:-1], "****")
    return line


def append(settings: Settings, action: str, **fields) -> dict:
    record = {
        "ts": utcnow(),
        "action": action,
        "operator": operator(),
        "target": settings.target,
        "database": settings.database,
        **fields,
    }
    path = settings.audit_log
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    safefile.append(path, masked_json(record, settings.secrets()) + "\n")  # O_NOFOLLOW, 0600
    return record


# Lines written before a step, not outcomes: "applying" (a revision is about to commit,
# dbops/ops/settle.py) and "swapping" (restore's rename). Readers of "the last run" skip them.
INTENTS = ("applying", "swapping")


def read(settings: Settings, path: Path | None = None, *, intents: bool = True) -> list[dict]:
    """Every record, oldest first; unreadable lines are skipped (a torn last line).
    ``intents=False``: outcomes only (no INTENTS lines)."""
    path = path or settings.audit_log
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if not intents:
        return [r for r in records if r.get("result") not in INTENTS]
    return records
