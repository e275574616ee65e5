"""Putting back, after a rollback's downgrade, what the migration took and the downgrade
cannot give back -- from the backup the migrate that applied those revisions took, and never
replacing what was written since (host side; the SQL: dbops/agent/putback.py putback.merge).

What to put back is the ``putback`` part of the loss set (dbops/ops/downgrade_loss.py):
tables the downgrades re-create, columns they re-add or set to a constant. The backup is found
through the audit record: the ``migrate`` record whose completed steps applied the lowest
revision being undone names its backup; a failed migrate, one without a backup, or a backup
that is gone or changed is refused before anything is touched.

The put-back is ONE psql transaction next to the server: temp tables, the backup's rows of the
affected tables restored into them (data-only pg_restore, each COPY's target rewritten to its
temp table), the merge (insert what is missing by primary key; update a column only where the
live row still holds what the downgrade left), row counts checked, COMMIT.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from dbops import audit, catalog
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.lifecycle import Operation, outcome_of
from dbops.ops.output import print_note

# Outside a COPY block, "COPY <name> (" becomes "COPY pg_temp.<temp table> ("; the data lines
# (up to "\.", which no data line can be) pass unchanged.
COPY_TO_STAGE = r"""
BEGIN { n = split(ENVIRON["DBOPS_PB_MAP"], rows, "\n")
        for (i = 1; i <= n; i++) { sp = index(rows[i], " ")
          if (sp) stage[substr(rows[i], sp + 1)] = substr(rows[i], 1, sp - 1) } }
incopy { print; if ($0 == "\\.") incopy = 0; next }
/^COPY / { i = index($0, " ("); name = substr($0, 6, i - 6)
  if (i == 0 || !(name in stage)) { print "SELECT dbops_putback_unexpected_copy;"; exit 1 }
  print "COPY pg_temp." stage[name] substr($0, i); incopy = 1; next }
{ print }
"""
NOTICE = re.compile(r"dbops-putback\|(.*)$")


def migrate_backup(
    settings: Settings, steps: list[dict], target: str | None, *, verify: bool = True
) -> dict:
    """{"entry": catalog entry, "record": migrate audit record} of the backup taken by the
    migrate that applied the lowest revision being undone, or {"refused": why}. ``verify``:
    the file's sha256 against its manifest too (before it is used), not only its size."""
    lowest = steps[-1]["revision"]
    record = None
    for r in reversed(audit.read(settings)):
        if r.get("action") != "migrate" or r.get("database") != settings.database:
            continue
        applied = [s.get("revision") for s in r.get("steps") or [] if not s.get("skipped")]
        if lowest in applied:
            record = r
            break
    if record is None:
        return {
            "refused": f"no migrate in the audit record ({settings.audit_log}) applied {lowest}, "
            "so dbops does not know which backup holds the data it took"
        }
    when = record.get("ts", "?")
    if record.get("result") != "ok":
        return {
            "refused": f"the migrate that applied {lowest} ({when}) ended {record.get('result')}"
            f" ({record.get('error') or 'no error recorded'}): its backup is not used "
            "for a put-back"
        }
    if not record.get("backup"):
        return {
            "refused": f"the migrate that applied {lowest} ({when}) took no backup "
            "(--no-backup or DBOPS_PREMIGRATE_BACKUP=none)"
        }
    path = Path(record["backup"])
    manifest, problems = catalog.check_backup(path, full=verify)
    if manifest is None or problems:
        return {
            "refused": f"the backup of the migrate that applied {lowest} ({when}), {path}, "
            f"is missing or changed: {'; '.join(problems)}"
        }
    want = [target] if target else []
    if sorted(manifest.get("revisions") or []) != want:
        return {
            "refused": f"{path.name} was taken at {'+'.join(manifest.get('revisions') or [])} "
            f"or 'base', not at {target or 'base'}"
        }
    return {"entry": {"path": str(path), "manifest": manifest}, "record": record}


def split(putback: dict, manifest: dict, path: str) -> tuple[dict, list[str]]:
    """(what can be put back from this backup, a line for each table that cannot, with the
    manual command)."""
    doable, lines = {}, []
    held = manifest.get("tables") or {}
    for q, spec in sorted(putback.items()):
        schema, name = q.split(".", 1)
        by_hand = shlex.join(
            ["pg_restore", "--data-only", "-n", schema, "-t", name, "-f", f"{name}.sql", path]
        )
        if q not in held:
            lines.append(
                f"  {q}: NOT put back: {Path(path).name} does not hold its rows (a touched "
                "backup holds only the tables the migration wrote)"
            )
            continue
        if spec["columns"] and not spec.get("pk"):
            lines.append(
                f"  {q}: NOT put back: no primary key, so the backup's values of "
                f"{', '.join(sorted(spec['columns']))} cannot be matched to live rows; by hand: "
                f"{by_hand}   # the backup's rows, to compare and apply"
            )
            if not spec["insert"]:
                continue
            spec = {**spec, "columns": {}}
        doable[q] = spec
    return doable, lines


def describe(doable: dict) -> list[str]:
    out = []
    for q, spec in sorted(doable.items()):
        if spec["insert"]:
            how = (
                "rows missing by primary key are inserted"
                if spec.get("pk")
                else "no primary key: its rows are inserted only while it is empty"
            )
            out.append(f"  {q}: re-created by the downgrade; {how}")
        for col, left in sorted(spec["columns"].items()):
            was = "its default" if left is None else left
            out.append(
                f"  {q}.{col}: {spec['why'].get(col, '')}; the backup's value goes back by "
                f"primary key where the live row still holds {was}"
            )
    return out


def run(settings: Settings, agent: Agent, entry: dict, doable: dict, out, tlabel: str) -> dict:
    """The put-back, audited as "putback" through its :class:`Operation` (ok, or failed with
    the merge's error); a failure says the state and the command to see what was not put
    back."""
    path = Path(entry["path"])
    record = {"file": str(path), "tables": sorted(doable), "after": "rollback", "to": tlabel}
    with Operation(settings, "putback", warn=print_note, **record) as op:
        out(f"putting back from {path.name}: {', '.join(sorted(doable))} ...")
        try:
            res = _merge(settings, agent, path, entry["manifest"], doable)
        except OpsError as exc:
            result, fields = outcome_of(exc)  # failed (agent_died), with the merge's error
            op.finish(result, **fields)
            raise _failed(exc, path, tlabel) from None
        op.finish(inserted=res["inserted"], updated=res["updated"], kept=res["kept"])
    for line in res["lines"]:
        out(line)
    out(
        f"put back: {len(doable)} table(s), {res['inserted']} row(s) inserted, {res['updated']} "
        f"value(s) restored, {res['kept']} kept (changed since the migration); counts checked "
        "against the backup's manifest"
    )
    return res


def _failed(exc: OpsError, path: Path, tlabel: str) -> OpsError:
    return OpsError(
        f"downgraded to {tlabel}, but putting the migration's data back failed: {exc.message}",
        details=exc.details,
        state=f"at {tlabel}; the tables are as the downgrade left them (the put-back is one "
        "transaction, rolled back)",
        next_command=f"invoke verify-backup {shlex.quote(str(path))} --restore-test   "
        f"# then put the rows back by hand; invoke migrate re-applies what was rolled back",
    )


def _merge(settings: Settings, agent: Agent, path: Path, manifest: dict, doable: dict) -> dict:
    from dbops import process

    try:
        sqls = agent.call(
            "putback.merge",
            tables=doable,
            counts={q: manifest["tables"][q] for q in doable},
            lock_timeout=settings.lock_timeout,
        )
    except AgentError as exc:
        raise OpsError(exc.message) from None
    select: list[str] = []
    for q in sorted(doable):
        schema, name = q.split(".", 1)
        select += ["-n", schema, "-t", name]
    # dbops/sh/putback-merge.sh: the archive on stdin; COMMIT only when pg_restore succeeded
    argv = process.sh_argv("putback-merge", "dbops-putback", sqls["prelude"], sqls["postlude"])
    with open(path, "rb") as src:
        done = process.run_job(
            agent.target.pg([*argv, COPY_TO_STAGE, sqls["map"], *select]), stdin=src
        )
    rc, markers, messages = done.rc, done.markers, done.messages
    if rc != 0 or markers.get("psql_exit") != "0" or "restore_failed" in markers:
        raise OpsError(
            "putting the backup's rows back failed; the transaction was rolled back",
            details=[m for m in messages if not NOTICE.search(m)][-8:],
        )
    res = {"inserted": 0, "updated": 0, "kept": 0, "lines": []}
    for m in messages:
        hit = NOTICE.search(m)
        if not hit:
            continue
        parts = hit.group(1).split("|")
        if parts[0] == "inserted":
            res["inserted"] += int(parts[2])
            res["lines"].append(f"  {parts[1]}: {parts[2]} row(s) inserted, {parts[3]} now")
        elif parts[0] == "updated":
            res["updated"] += int(parts[3])
            res["kept"] += int(parts[4])
            res["lines"].append(
                f"  {parts[1]}.{parts[2]}: {parts[3]} value(s) restored, {parts[4]} kept"
            )
    return res
