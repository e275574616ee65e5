"""Metrics in the Prometheus text format, written atomically to DBOPS_METRICS_FILE (node
exporter's textfile collector) with prometheus_client.

Every value is derived from durable state — the backup folder (manifests), the audit
record (migrate, rollback, restore, drill), doctor's last report (a state file) and the
schedule state — never from in-process counters: the file is written by whichever process
ran last (a task, the service's job, the service's refresh), and says the same thing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from dbops import audit, catalog
from dbops.config import Settings
from dbops.ops import schedule

DOCTOR_STATUS = {"ok": 0, "warn": 1, "fail": 2, "unknown": 3}
OPERATIONS = ("migrate", "rollback", "restore", "stamp", "recover")


def _ts(text: str | None) -> float | None:
    t = schedule.parse_iso(text)
    return t.timestamp() if t else None


def doctor_state_path(settings: Settings) -> Path:
    """Doctor's last check statuses: in the cache folder, never in the backup folder (doctor
    is read-only there: it must report on a full, read-only or unsafe backup volume)."""
    return Path(settings.get("DBOPS_CACHE_DIR")) / f"doctor.{catalog.slug(settings.database)}.json"


def save_doctor(settings: Settings, report: dict) -> str | None:
    """Keep doctor's check statuses (names and statuses only) for the metrics file. Fails soft:
    returns why it could not (doctor still reports), None when written."""
    from dbops import safefile

    path = doctor_state_path(settings)
    try:
        safefile.folder(path.parent)
        safefile.write_json(
            path,
            {
                "at": schedule.iso(datetime.now(UTC)),
                "database": settings.database,
                "checks": {c["name"]: c["status"] for c in report.get("checks", [])},
            },
        )
    except (OSError, safefile.FolderError) as exc:
        return getattr(exc, "message", None) or str(exc)
    return None


def registry(settings: Settings, now: datetime | None = None) -> CollectorRegistry:
    now = now or datetime.now(UTC)
    reg = CollectorRegistry()
    db = settings.database
    labels = ["database"]

    def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, [*labels, *extra], registry=reg)

    # --- backups: the folder is the truth --------------------------------------------
    entries = catalog.list_backups(settings, database=db)
    verified = [e for e in entries if e["verified"]]
    gauge("dbops_backups_verified", "verified backups of the database in the folder").labels(
        db
    ).set(len(verified))
    gauge("dbops_backups_invalid", "files in the folder that are not restorable backups").labels(
        db
    ).set(len(entries) - len(verified))
    gauge(
        "dbops_backup_newest_verified", "1 if the newest backup file is a verified backup"
    ).labels(db).set(1 if entries and entries[0]["verified"] else 0)
    gauge(
        "dbops_backup_schedule_interval_seconds",
        "interval of DBOPS_BACKUP_SCHEDULE (24 h when off)",
    ).labels(db).set(schedule.backup_interval_s(settings))
    if verified:
        m = verified[0]["manifest"]
        finished = _ts(m.get("finished_at")) or _ts(m.get("started_at"))
        gauge(
            "dbops_backup_last_success_timestamp_seconds",
            "when the newest verified backup finished",
        ).labels(db).set(finished)
        gauge(
            "dbops_backup_last_age_seconds", "age of the newest verified backup when written"
        ).labels(db).set(max(0.0, now.timestamp() - finished))
        gauge("dbops_backup_last_size_bytes", "size of the newest verified backup").labels(db).set(
            m["size"]
        )
        gauge(
            "dbops_backup_last_duration_seconds", "how long the newest verified backup took"
        ).labels(db).set(m.get("duration_s") or 0)
        gauge("dbops_backup_last_verified", "1: the newest backup was read back in full").labels(
            db
        ).set(1)

    # --- operations and drills: the audit record ------------------------------------
    last: dict[str, dict] = {}
    last_ok: dict[str, dict] = {}
    for rec in audit.read(settings):
        if rec.get("database") != db:
            continue
        action = rec.get("action")
        last[action] = rec
        if rec.get("result") == "ok":
            last_ok[action] = rec
    res = gauge(
        "dbops_operation_last_success",
        "1 if the last run of the operation succeeded",
        ("operation",),
    )
    when = gauge(
        "dbops_operation_last_timestamp_seconds", "when the operation last ran", ("operation",)
    )
    for op in OPERATIONS:
        if op in last:
            res.labels(db, op).set(1 if last[op].get("result") == "ok" else 0)
            when.labels(db, op).set(_ts(last[op].get("ts")) or 0)
    if "drill" in last:
        d = last["drill"]
        gauge("dbops_drill_last_success", "1 if the last restore drill passed").labels(db).set(
            1 if d.get("result") == "ok" else 0
        )
        gauge("dbops_drill_last_timestamp_seconds", "when the last restore drill ran").labels(
            db
        ).set(_ts(d.get("ts")) or 0)
    if "drill" in last_ok:
        d = last_ok["drill"]
        gauge(
            "dbops_drill_last_success_timestamp_seconds", "when a restore drill last passed"
        ).labels(db).set(_ts(d.get("ts")) or 0)
        gauge(
            "dbops_drill_restore_seconds", "pg_restore time of the last passed drill (RTO)"
        ).labels(db).set(d.get("restore_s") or 0)

    # --- doctor's last report ---------------------------------------------------------
    try:
        doc = json.loads(doctor_state_path(settings).read_text())
    except (OSError, ValueError):
        doc = None
    if doc and doc.get("database") == db:
        g = gauge(
            "dbops_doctor_check_status", "doctor check: 0 ok, 1 warn, 2 fail, 3 unknown", ("check",)
        )
        for name, status in doc.get("checks", {}).items():
            g.labels(db, name).set(DOCTOR_STATUS.get(status, 3))
        gauge("dbops_doctor_last_run_timestamp_seconds", "when doctor last ran").labels(db).set(
            _ts(doc.get("at")) or 0
        )
    gauge("dbops_metrics_written_timestamp_seconds", "when this file was written").labels(db).set(
        now.timestamp()
    )
    return reg


def write(settings: Settings) -> Path | None:
    """Write DBOPS_METRICS_FILE (atomically: prometheus_client writes a temporary file and
    renames it). None when the setting is unset."""
    path = settings.get("DBOPS_METRICS_FILE")
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry(settings))
    return path


def write_quietly(settings: Settings) -> None:
    """After an operation: metrics never fail it."""
    import sys

    try:
        write(settings)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: metrics not written: {exc}", file=sys.stderr)
