"""Point-in-time recovery, the server side: the facts pgBackRest needs (data directory, port,
socket folder, archive settings, pg_stat_archiver), ALTER SYSTEM for the archive settings, a
WAL switch, a time parsed by the server, and the WAL position migrate/rollback record just
before their first statement (dbops/ops/pitr.py is the host side)."""

from __future__ import annotations

from psycopg import sql

from dbops.agent.db import one_line
from dbops.agent.protocol import AgentFailure, handler

# Settings pitr-enable may change (ALTER SYSTEM); anything else is refused.
ARCHIVE_SETTINGS = ("archive_mode", "archive_command", "archive_timeout", "wal_level")
# Settings a recovering server must have at least as high as the primary's: a side instance
# is started with the live server's values (they may come from its command line).
RECOVERY_MINIMUMS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


@handler("pitr.position")
def position(ctx) -> dict:
    """The WAL insert position and the server's clock now. The insert position (not the write
    position pg_current_wal_lsn() gives) is after every record already inserted, committed or
    not yet flushed (synchronous_commit=off): recovery that stops before it keeps every
    transaction committed before this call. Never fails: a server that cannot say (a standby)
    gives None."""
    try:
        lsn, at = ctx.conn.execute(
            "SELECT pg_current_wal_insert_lsn()::text, clock_timestamp()"
        ).fetchone()
    except Exception:
        return {"wal_lsn": None, "wal_at": None}
    return {"wal_lsn": lsn, "wal_at": at.isoformat()}


@handler("pitr.facts")
def facts(ctx) -> dict:
    conn = ctx.conn
    try:
        settings = {
            name: {"value": value, "pending_restart": pending}
            for name, value, pending in conn.execute(
                "SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY(%s)",
                (
                    [
                        *ARCHIVE_SETTINGS,
                        *RECOVERY_MINIMUMS,
                        "data_directory",
                        "port",
                        "unix_socket_directories",
                        "server_version_num",
                    ],
                ),
            ).fetchall()
        }
        row = conn.execute(
            "SELECT archived_count, last_archived_wal, last_archived_time, failed_count, "
            "last_failed_wal, last_failed_time, stats_reset, "
            "pg_walfile_name(pg_current_wal_lsn()), pg_postmaster_start_time(), now(), "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user), "
            "pg_is_in_recovery() FROM pg_stat_archiver"
        ).fetchone()
    except Exception as exc:
        raise AgentFailure(f"cannot read the archive settings: {one_line(exc)}") from None
    keys = (
        "archived_count",
        "last_archived_wal",
        "last_archived_time",
        "failed_count",
        "last_failed_wal",
        "last_failed_time",
        "stats_reset",
        "current_wal",
        "postmaster_start",
        "now",
        "superuser",
        "in_recovery",
    )
    archiver = {
        k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in zip(keys, row, strict=True)
    }
    value = {k: v["value"] for k, v in settings.items()}
    if "data_directory" not in value:
        raise AgentFailure(
            "the data directory cannot be read (SHOW data_directory needs a superuser or "
            "pg_read_all_settings)",
            kind="privilege",
        )
    return {
        "settings": value,
        "pending_restart": sorted(k for k, v in settings.items() if v["pending_restart"]),
        "archiver": archiver,
    }


@handler("pitr.configure")
def configure(ctx, values: dict) -> dict:
    """ALTER SYSTEM SET each of ``values`` (only the archive settings), then reload."""
    unknown = sorted(set(values) - set(ARCHIVE_SETTINGS))
    if unknown:
        raise AgentFailure(f"not an archive setting: {', '.join(unknown)}")
    try:
        for name, value in values.items():
            ctx.conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(
                    sql.Identifier(name), sql.Literal(str(value))
                )
            )
        ctx.conn.execute("SELECT pg_reload_conf()")
    except Exception as exc:
        raise AgentFailure(f"ALTER SYSTEM failed: {one_line(exc)}", kind="privilege") from None
    return {"set": sorted(values)}


@handler("pitr.switch_wal")
def switch_wal(ctx) -> dict:
    """Close the current WAL segment so the archiver ships it; the name of the segment that
    must be archived for everything written so far to be recoverable."""
    try:
        (name,) = ctx.conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    except Exception as exc:
        raise AgentFailure(f"pg_switch_wal() failed: {one_line(exc)}", kind="privilege") from None
    return {"wal": name}


@handler("pitr.parse_time")
def parse_time(ctx, text: str) -> dict:
    """``text`` as the server reads a timestamptz (its TimeZone for a time without offset),
    back in ISO form with the offset; bad input: kind "bad_time"."""
    try:
        (at,) = ctx.conn.execute("SELECT %s::timestamptz", (text,)).fetchone()
    except Exception as exc:
        raise AgentFailure(f"--to-time={text!r}: {one_line(exc)}", kind="bad_time") from None
    return {"at": at.isoformat()}
