"""Metrics in the Prometheus text format, written atomically to DBOPS_METRICS_FILE (node
exporter's textfile collector) with prometheus_client.

Every value is derived from durable state — the backup folder (manifests), the audit
record (migrate, rollback, restore, drill), doctor's last report (a state file), the
schedule state and the run record — never from in-process counters: the file is written by
whichever process ran last (a task, the service's job, the service's refresh), and says the
same thing.

The run record (``<backup dir>/.dbops-runs.<db>.json``, updated under an flock by every
observed task as it finishes) gives, per job and database, the series an alert can use at
once: ``dbops_job_last_{attempt,success,failure}_timestamp_seconds`` (0: never),
``dbops_job_runs_total``, ``dbops_job_failures_total``, ``dbops_job_interrupted_total`` and
``dbops_job_last_duration_seconds``. A failure is ``last_failure > last_success``; an
interrupted run (SIGTERM, ``docker compose stop``) is an attempt, neither a success nor a
failure; a skipped tick (another instance ran it) is not recorded at all. The backup and
drill series exist from the first write, at 0, so "never passed" is an expression.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    write_to_textfile,
)

from dbops import audit, catalog, cron
from dbops.config import Settings

disable_created_metrics()  # a counter's _created would be this process's start, not the job's

DOCTOR_STATUS = {"ok": 0, "warn": 1, "fail": 2, "unknown": 3}
OPERATIONS = ("migrate", "rollback", "restore", "stamp", "recover")


def _ts(text: str | None) -> float | None:
    t = cron.parse_iso(text)
    return t.timestamp() if t else None


RUNS_STATE = ".dbops-runs.{}.json"
ALWAYS_SHOWN_JOBS = ("backup", "drill")  # 0 series from the start: "never" is expressible


# --- the run record: per job, attempts and outcomes (durable, shared by every process) ----
def runs_path(settings: Settings) -> Path:
    return Path(settings.backup_dir) / RUNS_STATE.format(catalog.slug(settings.database))


def read_runs(settings: Settings) -> dict:
    try:
        data = json.loads(runs_path(settings).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive flock on ``path``.lock: read-modify-write of the run record, one at a time
    across processes (the service's jobs, a manual task, fleet children)."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_run(
    settings: Settings, job: str, result: str, started: datetime, duration_s: float
) -> dict:
    """Count one finished run of ``job`` (result ok | failed | interrupted)."""
    path = runs_path(settings)
    catalog.ensure_dir(path.parent)
    with _locked(path):
        runs = read_runs(settings)
        row = runs.setdefault(job, {})
        row["runs"] = int(row.get("runs", 0)) + 1
        row["last_attempt"] = started.timestamp()
        row["last_result"] = result
        row["last_duration_s"] = duration_s
        if result == "ok":
            row["last_success"] = started.timestamp() + duration_s
        elif result == "failed":
            row["failures"] = int(row.get("failures", 0)) + 1
            row["last_failure"] = started.timestamp() + duration_s
        else:
            row["interrupted"] = int(row.get("interrupted", 0)) + 1
        catalog.write_json_atomic(path, runs)
    return row


# The jobs whose runs are counted (what the alert rules watch). Read-only tasks (doctor,
# current, backups, …) write nothing into the backup folder.
RECORDED_JOBS = ("backup", "drill", "migrate", "rollback", "restore", "stamp", "recover")
# A backup folder that cannot take the record: the task's own error (or doctor's backups
# check) already names the folder and what to do.
_UNWRITABLE = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)


def record_run_quietly(
    settings: Settings, job: str, result: str, started: datetime, duration_s: float
) -> None:
    import sys

    if job not in RECORDED_JOBS:
        return
    try:
        record_run(settings, job, result, started, duration_s)
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            print(f"warning: run record not written: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - the record never fails the operation
        print(f"warning: run record not written: {exc}", file=sys.stderr)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("dbops")
    except metadata.PackageNotFoundError:
        return "unknown"


def _job_series(reg: CollectorRegistry, settings: Settings) -> None:
    db = settings.database
    runs = read_runs(settings)
    labels = ["database", "job"]
    stamps = {
        key: Gauge(f"dbops_job_last_{key}_timestamp_seconds", doc, labels, registry=reg)
        for key, doc in (
            ("attempt", "when the job last started (0: never)"),
            ("success", "when the job last succeeded (0: never)"),
            ("failure", "when the job last failed (0: never)"),
        )
    }
    counters = {
        key: Counter(f"dbops_job_{key}", doc, labels, registry=reg)
        for key, doc in (
            ("runs", "runs of the job (ok, failed or interrupted; skipped ticks not counted)"),
            ("failures", "failed runs of the job"),
            ("interrupted", "runs stopped by a signal (neither success nor failure)"),
        )
    }
    duration = Gauge(
        "dbops_job_last_duration_seconds",
        "how long the last run of the job took",
        labels,
        registry=reg,
    )
    for job in sorted(set(ALWAYS_SHOWN_JOBS) | set(runs)):
        row = runs.get(job, {})
        for key, g in stamps.items():
            g.labels(db, job).set(float(row.get(f"last_{key}", 0) or 0))
        for key, c in counters.items():
            c.labels(db, job).inc(int(row.get(key, 0) or 0))
        duration.labels(db, job).set(float(row.get("last_duration_s", 0) or 0))


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
                "at": cron.iso(datetime.now(UTC)),
                "database": settings.database,
                "checks": {c["name"]: c["status"] for c in report.get("checks", [])},
                "archiver": archiver_of(report),
            },
        )
    except (OSError, safefile.FolderError) as exc:
        return getattr(exc, "message", None) or str(exc)
    return None


ARCHIVER_FIELDS = ("last_archived_time", "last_failed_time", "failed_count", "archived_count")


def archiver_of(report: dict) -> dict | None:
    """pg_stat_archiver as doctor's archiving check read it (None when WAL archiving is off)."""
    for check in report.get("checks", []):
        if check.get("name") == "archiving" and isinstance(check.get("archiver"), dict):
            a = check["archiver"]
            return {k: a.get(k) for k in ARCHIVER_FIELDS}
    return None


def _archiving_series(gauge, db: str, a: dict) -> None:
    """WAL archiving, from doctor's last reading of pg_stat_archiver."""
    archived, failed = _ts(a.get("last_archived_time")), _ts(a.get("last_failed_time"))
    gauge(
        "dbops_wal_last_archived_timestamp_seconds",
        "when the last WAL segment was archived (0: never), as doctor last read it",
    ).labels(db).set(archived or 0)
    gauge(
        "dbops_wal_archive_failing",
        "1 if the last WAL archiving attempt failed (no segment archived since)",
    ).labels(db).set(1 if failed and (not archived or failed > archived) else 0)
    gauge(
        "dbops_wal_archive_failed_count", "failed WAL archiving attempts since the stats reset"
    ).labels(db).set(a.get("failed_count") or 0)


def _physical_series(gauge, db: str, rec: dict) -> None:
    """The last successful pgBackRest backup (invoke backup --physical), from the audit record."""
    gauge(
        "dbops_physical_backup_last_success_timestamp_seconds",
        "when the last physical (pgBackRest) backup finished",
    ).labels(db).set(_ts(rec.get("ts")) or 0)
    gauge("dbops_physical_backup_last_size_bytes", "size of the last physical backup").labels(
        db
    ).set(rec.get("size") or 0)
    gauge(
        "dbops_physical_backup_last_verified", "1: pgbackrest verify passed on the last one"
    ).labels(db).set(1 if rec.get("verified") else 0)


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
    ).labels(db).set(cron.backup_interval_s(settings))
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
    for rec in audit.read(settings, intents=False):
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

    if "backup-physical" in last_ok:
        _physical_series(gauge, db, last_ok["backup-physical"])

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
        if doc.get("archiver"):
            _archiving_series(gauge, db, doc["archiver"])
    gauge("dbops_metrics_written_timestamp_seconds", "when this file was written").labels(db).set(
        now.timestamp()
    )
    _job_series(reg, settings)
    Info("dbops_build", "the dbops that wrote this file", registry=reg).info(
        {"version": _version(), "python": platform.python_version()}
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
