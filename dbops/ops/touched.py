"""Touched backups (host side): the set of relations a migration writes, the pre-migrate
backup policy (DBOPS_PREMIGRATE_BACKUP=auto|full|touched|none), and putting a touched
backup's relations back (restore of a partial backup, rollback to its revision).

The touched set is computed by the agent (dbops/agent/touched.py) on a schema-only scratch
copy of the live database, loaded here through the seam: ``pg_dump --schema-only | psql``
next to the server (both targets), so it costs seconds whatever the data size.
"""

from __future__ import annotations

import subprocess
import threading

from dbops import catalog, seam
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.backup import _drain, _stop, fmt_bytes
from dbops.ops.output import Out, print_note

# Args: $1 scratch database. The live database's schema (no data, no owners, no grants) into it.
SCHEMA_COPY_SCRIPT = r"""
set -u
scratch=$1
{ pg_dump --schema-only --no-owner --no-privileges --no-publications --no-subscriptions;
  echo "dbops:dump_exit=$?" >&2; } |
  psql -X -q -v ON_ERROR_STOP=1 -d "$scratch" > /dev/null
echo "dbops:load_exit=$?" >&2
"""

# Args: $1 prelude SQL, $2 postlude SQL, then pg_restore's selection (-n S -t T …).
# The archive arrives on stdin. ONE psql session, ONE transaction: COMMIT is sent only when
# pg_restore succeeded, and the postlude's row-count checks raise before it otherwise.
PUTBACK_SCRIPT = r"""
set -u
pre=$1; post=$2; shift 2
{ printf '%s\n' "BEGIN;" "$pre"
  if pg_restore --data-only -f - "$@"; then
    printf '%s\n' "$post" "COMMIT;"
  else
    echo "dbops:restore_failed" >&2; printf '%s\n' "ROLLBACK;"
  fi
} | psql -X -q -v ON_ERROR_STOP=1 > /dev/null
echo "dbops:psql_exit=$?" >&2
"""


def mode(settings: Settings) -> str:
    return settings.get("DBOPS_PREMIGRATE_BACKUP")


def full_max_bytes(settings: Settings) -> int:
    return int(settings.get("DBOPS_PREMIGRATE_FULL_MAX_MB") * 1_000_000)


def _markers(lines: list[str]) -> tuple[dict, list[str]]:
    markers, messages = {}, []
    for line in lines:
        if line.startswith("dbops:"):
            k, _, v = line[6:].partition("=")
            markers[k] = v
        elif line.strip():
            messages.append(line)
    return markers, messages


def _run_pg(
    settings: Settings, launch: seam.Launch, stdin=subprocess.DEVNULL
) -> tuple[int, dict, list[str]]:
    lines: list[str] = []
    proc = seam.start(
        launch,
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    drain = threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True)
    drain.start()
    try:
        rc = proc.wait()
    finally:
        _stop(proc)
    drain.join(timeout=30)
    markers, messages = _markers(lines)
    return rc, markers, [seam.mask(m, settings.secrets()) for m in messages]


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
            settings, agent.target.pg(["sh", "-c", SCHEMA_COPY_SCRIPT, "dbops-schema-copy", name])
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
    from dbops.ops import backup as backup_op

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
            return take_full()
        how = "touched"
        out(
            f"backup: touched (DBOPS_PREMIGRATE_BACKUP=auto: {basis} {fmt_bytes(estimate)} > "
            f"{fmt_bytes(limit)})"
        )
    if how == "full":
        return take_full()
    try:
        ts = touched_set(settings, agent, target, current, warn)
    except AgentError as exc:  # in doubt: full, and say why
        ts = {"full": f"the touched set could not be computed: {exc.message}"}
    if ts.get("full"):
        out(f"backup: full instead of touched: {ts['full']}")
        return take_full()
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


def putback(
    settings: Settings, agent: Agent, path, manifest: dict, only: list[str] | None = None
) -> dict:
    """Replace the data of a partial backup's relations (``only``: those of them) on the live
    database with the backup's, in ONE transaction that checks every table's row count against
    the manifest. The caller holds the lock and has checked the live revision."""
    from pathlib import Path

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
    select: list[str] = []
    for q in tables + sequences:
        schema, name = q.split(".", 1)
        select += ["-n", schema, "-t", name]
    with open(Path(path), "rb") as src:
        rc, markers, messages = _run_pg(
            settings,
            agent.target.pg(
                [
                    "sh",
                    "-c",
                    PUTBACK_SCRIPT,
                    "dbops-putback",
                    sqls["prelude"],
                    sqls["postlude"],
                    *select,
                ]
            ),
            stdin=src,
        )
    if rc != 0 or markers.get("psql_exit") != "0" or "restore_failed" in markers:
        raise OpsError(
            "putting the backup's rows back failed; the transaction was rolled back",
            details=messages[-8:],
            state="the touched tables are unchanged (one transaction)",
        )
    return {
        "tables": len(tables),
        "rows": sum(counts.values()),
        "sequences": len(sequences),
        "names": tables,
    }
