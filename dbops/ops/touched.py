"""Touched backups (host side): the set of relations a migration writes, the pre-migrate
backup policy (DBOPS_PREMIGRATE_BACKUP=auto|full|touched|none), and putting a touched
backup's relations back (restore of a partial backup, rollback to its revision).

The touched set is computed by the agent (dbops/agent/touched.py) on a schema-only scratch
copy of the live database, loaded here through the seam: ``pg_dump --schema-only | psql``
next to the server (dbops/sh/schema-copy.sh, a dbops/process.py job; every target), so it
costs seconds whatever the data size.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from dbops import catalog, process, seam
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.backup import fmt_bytes
from dbops.ops.output import Out, print_note


def mode(settings: Settings) -> str:
    return settings.get("DBOPS_PREMIGRATE_BACKUP")


def full_max_bytes(settings: Settings) -> int:
    return int(settings.get("DBOPS_PREMIGRATE_FULL_MAX_MB") * 1_000_000)


def _run_pg(
    settings: Settings, launch: seam.Launch, stdin=subprocess.DEVNULL
) -> tuple[int, dict, list[str]]:
    """Status, markers and messages (masked) of a job run to its end (process.run_job)."""
    ended = process.run_job(launch, stdin=stdin)
    return ended.rc, ended.markers, [seam.mask(m, settings.secrets()) for m in ended.messages]


def touched_set(
    settings: Settings, agent: Agent, target: str, current: list[str], warn: Out = print_note
) -> dict:
    """The agent's touched-set answer (see dbops/agent/touched.py), the scratch copy always
    dropped."""
    made = agent.call("touched.scratch")
    name = made["name"]
    for old in made["swept"]:
        warn(f"dropped {old}, left behind by an interrupted touched-set run")
    try:
        rc, markers, messages = _run_pg(
            settings, agent.target.pg(process.sh_argv("schema-copy", "dbops-schema-copy", name))
        )
        if markers.get("dump_exit") != "0" or markers.get("load_exit") != "0":
            return {
                "full": "copying the schema into a scratch database failed: "
                + ("; ".join(messages[-3:]) or f"status {rc}"),
                "relations": {},
            }
        return agent.call("touched.trace", name=name, to=target, current=current)
    finally:
        try:
            agent.call("touched.drop", name=name)
        except OpsError as exc:
            warn(f"warning: could not drop the scratch database {name}: {exc.message}")


def premigrate_backup(
    settings: Settings,
    agent: Agent,
    out: Out,
    current: list[str],
    target: str,
    take_full,
    warn: Out = print_note,
) -> str | None:
    """The pre-migrate backup as DBOPS_PREMIGRATE_BACKUP says. ``take_full(reason)`` takes a
    full one (migrate's own helper: its failure message and next command). Returns the path."""
    how = mode(settings)
    if how == "none":
        out(
            "backup: skipped (DBOPS_PREMIGRATE_BACKUP=none)"
            + (
                "  WARNING: ENVIRONMENT=production: there is no pre-migrate backup"
                if settings.is_production
                else ""
            )
        )
        return None
    if how == "auto":
        how = _auto_choice(settings, agent, out)
    if how == "full":
        return take_full()
    try:
        ts = touched_set(settings, agent, target, current, warn)
    except AgentError as exc:  # in doubt: full, and say why
        ts = {"full": f"the touched set could not be computed: {exc.message}"}
    if ts.get("full"):
        out(f"backup: full instead of touched: {ts['full']}")
        return take_full()
    return _touched_backup(settings, agent, out, current, ts)


def _auto_choice(settings: Settings, agent: Agent, out: Out) -> str:
    """DBOPS_PREMIGRATE_BACKUP=auto: "full" up to DBOPS_PREMIGRATE_FULL_MAX_MB (the last full
    backup's size, else half the database's), "touched" above it; the choice is printed."""
    last = catalog.newest_verified(settings, settings.database)
    if last is not None:
        estimate, basis = last["size"], "the last full backup's size"
    else:
        estimate = agent.call("restore.facts")["database_size"] // 2
        basis = "half the database size"
    limit = full_max_bytes(settings)
    if estimate <= limit:
        out(
            f"backup: full (DBOPS_PREMIGRATE_BACKUP=auto: {basis} {fmt_bytes(estimate)} <= "
            f"DBOPS_PREMIGRATE_FULL_MAX_MB {fmt_bytes(limit)})"
        )
        return "full"
    out(
        f"backup: touched (DBOPS_PREMIGRATE_BACKUP=auto: {basis} {fmt_bytes(estimate)} > "
        f"{fmt_bytes(limit)})"
    )
    return "touched"


def _touched_backup(
    settings: Settings, agent: Agent, out: Out, current: list[str], ts: dict
) -> str:
    """The partial backup of the touched set ``ts``, its relations listed first."""
    from dbops.ops import backup as backup_op

    out(
        f"touched by the pending revisions ({len(ts['tables'])} table(s), "
        f"{len(ts['sequences'])} sequence(s)):"
    )
    for name, why in sorted(ts["relations"].items()):
        out(f"  {name}: {why}")
    try:
        res = backup_op.take_backup(settings, agent, "pre-migrate", touched=ts, prune=True)
    except OpsError as exc:
        raise OpsError(
            f"the pre-migrate (touched) backup failed, so nothing was changed: {exc.message}",
            state=f"unchanged at {'+'.join(current) or 'base'}",
            details=exc.details,
            next_command="invoke backup   # fix the backup; or knowingly skip it: "
            "invoke migrate --no-backup",
        ) from None
    out(f"backup (touched, partial): {res['path']}")
    return str(res["path"])


def selection(names: list[str]) -> list[str]:
    """pg_restore's ``-n SCHEMA -t NAME`` pairs for qualified names "schema.name"."""
    select: list[str] = []
    for q in names:
        schema, name = q.split(".", 1)
        select += ["-n", schema, "-t", name]
    return select


def putback(
    settings: Settings, agent: Agent, path, manifest: dict, only: list[str] | None = None
) -> dict:
    """Replace the data of a partial backup's relations (``only``: those of them) on the live
    database with the backup's, in ONE transaction that checks every table's row count against
    the manifest (dbops/sh/touched-putback.sh). The caller holds the lock and has checked the
    live revision."""
    counts = {q: n for q, n in manifest["tables"].items() if only is None or q in only}
    tables = sorted(counts)
    sequences = [
        q
        for q in (manifest.get("touched") or {}).get("sequences") or []
        if only is None or q in only
    ]
    try:
        sqls = agent.call(
            "putback.sql", tables=counts, sequences=sequences, lock_timeout=settings.lock_timeout
        )
    except AgentError as exc:
        raise OpsError(exc.message, state="unchanged") from None
    argv = process.sh_argv("touched-putback", "dbops-putback", sqls["prelude"], sqls["postlude"])
    with open(Path(path), "rb") as src:
        done = process.run_job(agent.target.pg([*argv, *selection(tables + sequences)]), stdin=src)
    if done.rc != 0 or done.markers.get("psql_exit") != "0" or "restore_failed" in done.markers:
        raise OpsError(
            "putting the backup's rows back failed; the transaction was rolled back",
            details=done.messages[-8:],
            state="the touched tables are unchanged (one transaction)",
        )
    return {
        "tables": len(tables),
        "rows": sum(counts.values()),
        "sequences": len(sequences),
        "names": tables,
    }
