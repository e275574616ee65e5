"""invoke doctor: a read-only health check on one screen, ending with the one next command.

One agent process answers ``doctor.facts`` (status, pending tables from the offline SQL,
INVALID indexes, sessions, locks, pg_dump), ``recover.inspect`` (live fingerprint),
``recover.expected`` only when the expected schemas are not cached, and ``revisions.hashes``.
The host adds pg_dump's version (through the seam), the backup catalog and the audit record. A part that cannot be answered is "unknown", never a crash.

The next command follows the runbook's order (docs/recovery.md):
unreachable > INVALID index > schema/version record wrong (recover) > several heads >
a session blocking pending migrations > pg_dump running > edited revision files >
pending revisions (migrate) > no recent verified backup (backup) > nothing to do.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

from dbops import audit, catalog, seam
from dbops.agent import fingerprint as fpmod
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops import recover as recover_op

OK, WARN, FAIL, UNKNOWN = "ok", "warn", "fail", "unknown"
BACKUP_MAX_AGE_H = 24.0
IDLE_TX_WARN_S = 60
SCHEMA_ACTIONS = ("migrate", "rollback", "stamp", "recover")


class Report:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.checks: list[dict] = []
        self.candidates: list[tuple[int, str, str]] = []  # (priority, command, why)

    def add(self, name: str, status: str, summary: str, details: list[str] | None = None,
            **data) -> dict:
        ch = {"name": name, "status": status, "summary": summary, "details": details or [], **data}
        self.checks.append(ch)
        return ch

    def next(self, priority: int, command: str, why: str) -> None:
        self.candidates.append((priority, command, why))


def psql_command(settings: Settings, sql: str) -> str:
    """The command for one SQL statement on the target (`invoke psql` goes through the seam)."""
    return shlex.join(["invoke", "psql", "-c", sql])


def _ident(name: str) -> str:
    return ".".join(p if re.fullmatch(r"[a-z_][a-z0-9_$]*", p) else '"' + p.replace('"', '""') + '"'
                    for p in name.split("."))


def _age(ts: str | datetime | None) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (datetime.now(UTC) - ts).total_seconds() / 3600


def _major(version: str | None) -> int | None:
    m = re.search(r"(\d+)(?:\.\d+)?", version or "")
    return int(m.group(1)) if m else None


def pg_dump_version(settings: Settings) -> str | None:
    try:
        done = seam.run(seam.target_for(settings).pg(["pg_dump", "--version"]), timeout=60)
    except Exception:  # no pg_dump, compose not answering: reported as unknown
        return None
    if done.returncode != 0:
        return None
    m = re.search(r"(\d+(?:\.\d+)?)", done.stdout.decode(errors="replace"))
    return m.group(1) if m else None


def newest_verified_backup(settings: Settings) -> tuple[dict | None, str | None]:
    """(the newest verified backup, or None; why it is unknown, or None)."""
    try:
        backups = catalog.list_backups(settings)
    except Exception as exc:
        return None, f"the backup catalog could not be read: {exc}"
    for b in backups or []:
        if (b.get("verified") if isinstance(b, dict) else getattr(b, "verified", False)):
            return (b if isinstance(b, dict) else vars(b)), None
    return None, None


def doctor(settings: Settings, *, schema: bool = True) -> dict:
    r = Report(settings)
    target = seam.target_for(settings)
    result: dict = {"target": target.describe(), "database": settings.database,
                    "environment": settings.environment}
    try:
        with Agent(settings, target) as agent:
            _with_agent(r, settings, agent, schema=schema, result=result)
    except OpsError as exc:  # the agent could not even start (config, compose, python)
        r.add("connectivity", FAIL, exc.message)
        r.next(0, exc.next_command or "check .env (see .env.example)", "the agent cannot start")
    _backups(r, settings)
    _audit(r, settings)
    r.candidates.sort(key=lambda c: c[0])
    if r.candidates:
        _, cmd, why = r.candidates[0]
    else:
        cmd, why = "nothing to do", "all checks passed"
    result.update(checks=r.checks, next=cmd, next_reason=why)
    return result


def _with_agent(r: Report, settings: Settings, agent: Agent, *, schema: bool, result: dict) -> None:
    try:
        facts = agent.call("doctor.facts")
    except AgentError as exc:
        facts = {"errors": {"facts": exc.message}, "status": None}
    st = facts.get("status")
    errors = facts.get("errors") or {}
    if not st and (facts.get("error_kinds") or {}).get("status", "connect") == "connect":
        why = errors.get("status") or errors.get("facts")
        s = settings
        r.add("connectivity", FAIL, f"cannot reach database {s.database}: {why}")
        r.next(0, "invoke up" if s.target == "compose" else f"pg_isready -h {s.host} -p {s.port}",
               "the database does not answer")
        return
    if not st:  # reachable, but the alembic state cannot be read: say so, check the rest
        r.add("revision", FAIL, f"cannot read the alembic state: {errors.get('status')}")
        r.next(2, "invoke recover", "the alembic state cannot be read")
        _indexes(r, settings, facts)
        _sessions(r, settings, facts, [])
        return
    # --- connectivity and versions --------------------------------------------------
    dump_v = pg_dump_version(settings)
    server_major, dump_major = _major(st["server_version"]), _major(dump_v)
    line = f"PostgreSQL {st['server_version']}; pg_dump {dump_v or 'unknown'}"
    if dump_v is None:
        r.add("connectivity", WARN, f"{line} (pg_dump --version did not answer)")
    elif dump_major is not None and server_major is not None and dump_major < server_major:
        r.add("connectivity", WARN, f"{line}: pg_dump is older than the server and will refuse "
              f"to dump it")
    else:
        r.add("connectivity", OK, line)
    result["server_version"], result["pg_dump_version"] = st["server_version"], dump_v

    # --- heads -----------------------------------------------------------------------
    heads = st["heads"]
    msgs = {h["revision"]: h["message"] for h in st["history"]}
    if len(heads) > 1:
        cmd = f"alembic -c {settings.alembic_ini} merge -m 'merge heads' {' '.join(heads)}"
        r.add("heads", FAIL, f"{len(heads)} heads: {', '.join(heads)} — merge them before migrating",
              [f"{h}  {msgs.get(h, '')}" for h in heads])
        r.next(3, cmd, "several heads")
    elif not heads:
        r.add("heads", WARN, "the script directory has no revisions")
    else:
        r.add("heads", OK, f"1 head: {heads[0]}  {msgs.get(heads[0], '')}")

    # --- revision: current vs heads ----------------------------------------------------
    insp = None
    try:
        insp = recover_op.scoped_inspect(settings, agent.call("recover.inspect"))
    except AgentError as exc:
        facts["errors"]["inspect"] = exc.message
    current, pending = st["current"], st["pending"]
    populated = bool(insp and insp["live"]["fingerprint"]["tables"])
    has_table = insp["version_table"] if insp else bool(current)
    if st["unknown_current"]:
        r.add("revision", FAIL, f"alembic_version names {', '.join(st['unknown_current'])}, which "
              f"the script directory does not have")
        r.next(2, "invoke recover", "unknown version id")
    elif not current and populated:
        r.add("revision", FAIL, ("no alembic_version table" if not has_table else
                                 "alembic_version is empty") + " but the database has tables")
        r.next(2, "invoke recover", "a populated database without a version row")
    elif st["at_head"]:
        r.add("revision", OK, f"at head {', '.join(current)}")
    else:
        where = ", ".join(current) if current else "base (empty database)"
        r.add("revision", WARN, f"at {where}; {len(pending)} pending: {', '.join(pending)}",
              [f"{p}  {msgs.get(p, '')}" for p in pending])
        r.next(7, "invoke migrate", "pending revisions")
    result.update(current=current, heads=heads, pending=pending)

    # --- the live schema vs the current revision ------------------------------------------
    _schema(r, settings, agent, insp, st, schema=schema)

    _indexes(r, settings, facts)

    # --- sessions and locks -----------------------------------------------------------------
    _sessions(r, settings, facts, pending)

    # --- pg_dump running --------------------------------------------------------------------
    dumps = facts.get("pg_dump")
    if dumps is None:
        r.add("pg_dump", UNKNOWN, f"could not read pg_stat_activity: {facts['errors'].get('pg_dump')}")
    elif dumps:
        d = dumps[0]
        r.add("pg_dump", WARN, f"{d['application_name']} running: pid {d['pid']} on "
              f"{d['database']} since {d['since']} ({d['seconds']} s)",
              [f"pid {x['pid']} {x['application_name']} on {x['database']} since {x['since']}"
               for x in dumps])
        if pending:
            r.next(5, f"invoke migrate   (after {d['application_name']} pid {d['pid']} finishes)",
                   "a dump is running and its locks would block the migration")
    else:
        r.add("pg_dump", OK, "no pg_dump running")

    # --- revision files edited after they were applied ---------------------------------------
    _edited(r, settings, agent, st)
    checks = {c["name"]: c for c in r.checks}
    if checks.get("revision files", {}).get("status") == WARN and \
            checks.get("schema", {}).get("status") == FAIL:
        checks["schema"]["details"].insert(0, "revision files were edited after they were applied "
                                              "(see below): the expected schema comes from the "
                                              "edited files")


def _indexes(r: Report, settings: Settings, facts: dict) -> None:
    inv = facts.get("invalid_indexes")
    if inv is None:
        r.add("indexes", UNKNOWN, f"could not list indexes: {facts['errors'].get('invalid_indexes')}")
    elif inv:
        r.add("indexes", FAIL, f"{len(inv)} INVALID index(es): " + ", ".join(
            f"{i['index']} on {i['table']}" for i in inv),
            [f"{i['definition']}  (left by a failed CREATE INDEX CONCURRENTLY: drop it, then "
             f"re-run the migration)" for i in inv])
        r.next(1, psql_command(settings, f"DROP INDEX CONCURRENTLY IF EXISTS "
                                         f"{_ident(inv[0]['schema'] + '.' + inv[0]['index'].split('.')[-1])}"),
               "an INVALID index")
    else:
        r.add("indexes", OK, "no INVALID indexes")


def _schema(r: Report, settings: Settings, agent: Agent, insp: dict | None, st: dict, *,
            schema: bool) -> None:
    if insp is None:
        r.add("schema", UNKNOWN, "could not fingerprint the live database")
        return
    if not schema:
        r.add("schema", UNKNOWN, f"not checked (--no-schema); live: {insp['live']['summary']}")
        return
    try:
        steps, source = recover_op.expected_steps(settings, agent, insp)
    except OpsError as exc:
        r.add("schema", UNKNOWN, f"could not build the expected schemas: {exc.message}")
        return
    live_fp, live_hash = insp["live"]["fingerprint"], insp["live"]["hash"]
    current = sorted(st["current"])
    idx = next((i for i, s in enumerate(steps) if sorted(s["heads"]) == current), None)
    matches = [s["revision"] or "base" for s in steps if s["hash"] == live_hash]
    note = "" if source["source"] == "cache" else f" (expected schemas built in {source['seconds']:.1f} s)"
    if idx is None:  # an unknown version id (or a head set no linear pass produces)
        where = f"matches {' = '.join(matches)} exactly" if matches else "matches no revision"
        r.add("schema", FAIL, f"alembic_version says {', '.join(current)}; the live schema "
              f"{where}{note}")
        r.next(2, "invoke recover", "the version record and the schema disagree")
        return
    if steps[idx]["hash"] == live_hash:
        r.add("schema", OK, f"live schema matches {', '.join(current) or 'base'} exactly{note}")
        return
    diffs = fpmod.diff(steps[idx]["fingerprint"], live_fp)
    details = diffs[:8] + ([f"… and {len(diffs) - 8} more (invoke recover)"] if len(diffs) > 8 else [])
    if matches:  # the record is wrong, not the schema: the diff against it is noise
        details = []
    half = recover_op.half_applied(steps, idx, live_fp)
    if half:
        summary = (f"DIRTY: revision {half} is half-applied (a non-transactional step ran, the "
                   f"rest did not); alembic_version still says {', '.join(current)}")
    elif matches:
        summary = (f"live schema is not {', '.join(current) or 'base'}: it matches "
                   f"{' = '.join(matches)} exactly")
    else:
        summary = (f"live schema differs from {', '.join(current) or 'base'} "
                   f"({len(diffs)} difference(s)) and matches no revision")
    r.add("schema", FAIL, summary + note, details, half_applied=half)
    r.next(2, "invoke recover", "the schema does not match the current revision")


def _sessions(r: Report, settings: Settings, facts: dict, pending: list[str]) -> None:
    sessions, locks = facts.get("sessions"), facts.get("locks")
    tables = facts.get("pending_tables")
    if sessions is None:
        r.add("sessions", UNKNOWN, f"could not read pg_stat_activity: {facts['errors'].get('sessions')}")
        return
    details = []
    blockers: dict[int, list[str]] = {}
    for lk in locks or []:
        if lk["granted"]:
            blockers.setdefault(lk["pid"], []).append(f"{lk['mode']} on {lk['table']}")
    by_pid = {s["pid"]: s for s in sessions}
    for pid, held in blockers.items():
        s = by_pid.get(pid, {})
        lk = next(x for x in locks if x["pid"] == pid)
        details.append(f"pid {pid} '{lk['application_name']}' ({lk['state']}, transaction open "
                       f"{lk['xact_seconds']} s) holds {', '.join(held)}"
                       + (f": {s['query']}" if s.get("query") else ""))
    idle = [s for s in sessions if s["state"].startswith("idle in transaction")
            and s["pid"] not in blockers]
    active = [s for s in sessions if s["state"] == "active"]
    details += [f"pid {s['pid']} '{s['application_name']}' idle in transaction for "
                f"{s['xact_seconds']} s: {s['query']}" for s in idle]
    details += [f"pid {s['pid']} '{s['application_name']}' running for {s['query_seconds']} s"
                + (f" (waiting on {s['waiting']})" if s["waiting"] else "") + f": {s['query']}"
                for s in active]
    where = f" ({', '.join(tables)})" if tables else ""
    if blockers and pending:
        pid = next(iter(blockers))
        r.add("sessions", FAIL, f"{len(blockers)} session(s) hold locks on tables the pending "
              f"migrations touch{where}: migrate would time out behind them", details)
        r.next(4, psql_command(settings, f"SELECT pg_terminate_backend({pid})")
               + "   (after checking who owns it; or wait for it to end)",
               f"pid {pid} holds a lock a pending migration needs")
    elif [s for s in idle if (s["xact_seconds"] or 0) >= IDLE_TX_WARN_S] or active:
        r.add("sessions", WARN, f"{len(idle)} idle-in-transaction, {len(active)} long-running "
              f"session(s)", details)
    elif idle:
        r.add("sessions", OK, f"{len(idle)} idle-in-transaction session(s), none holding locks "
              f"pending migrations need", details)
    else:
        extra = f"; pending migrations touch {', '.join(tables)}" if tables else ""
        r.add("sessions", OK, f"no long or idle-in-transaction sessions{extra}")
    if tables is None and pending:
        r.checks[-1]["details"].append(f"tables touched by pending migrations: unknown "
                                       f"({facts['errors'].get('pending_tables')})")


def _edited(r: Report, settings: Settings, agent: Agent, st: dict) -> None:
    try:
        hashes = agent.call("revisions.hashes")
    except AgentError as exc:
        r.add("revision files", UNKNOWN, f"cannot hash the revision files (agent op "
              f"revisions.hashes: {exc.message})")
        return
    if isinstance(hashes, dict) and isinstance(hashes.get("hashes"), dict):
        hashes = hashes["hashes"]
    recorded: dict[str, tuple[str, str]] = {}
    for rec in audit.read(settings):
        if rec.get("database") != settings.database or rec.get("action") not in SCHEMA_ACTIONS:
            continue
        applied = rec.get("revision_hashes_applied")  # migrate: what really ran, even if failed
        if applied is None:
            if rec.get("result") not in (None, "ok", "success", "succeeded"):
                continue
            applied = rec.get("revision_hashes")
        for rev, h in (applied or {}).items():
            if h:
                recorded[rev] = (h, rec.get("ts", "?"))
    if not recorded:
        r.add("revision files", OK if hashes else UNKNOWN,
              "no audit record with revision hashes for this database yet: nothing to compare")
        return
    paths = {h["revision"]: h.get("path") for h in st["history"]}
    edited = [(rev, ts) for rev, (h, ts) in sorted(recorded.items())
              if rev in hashes and hashes[rev] != h]
    if edited:
        r.add("revision files", WARN, f"{len(edited)} revision file(s) edited after they were "
              f"applied: {', '.join(rev for rev, _ in edited)}",
              [f"{rev} ({Path(paths.get(rev) or rev).name}) applied {ts}, file changed since"
               for rev, ts in edited])
        p = paths.get(edited[0][0])
        r.next(1.5, f"git log -p -- {shlex.quote(p) if p else edited[0][0]}",
               "a revision file changed after it was applied")
    else:
        r.add("revision files", OK, f"{len(recorded)} applied revision file(s) unchanged since "
              f"applied")


def _backups(r: Report, settings: Settings) -> None:
    newest, why = newest_verified_backup(settings)
    if why:
        r.add("backups", UNKNOWN, f"age of the newest verified backup: unknown ({why})")
        return
    if newest is None:
        r.add("backups", WARN, f"no verified backup of {settings.database} in {settings.backup_dir}")
        r.next(8, "invoke backup", "no verified backup")
        return
    age = _age(newest.get("created_at"))
    name = Path(str(newest.get("path", "?"))).name
    if age is None:
        r.add("backups", WARN, f"newest verified backup {name}: age unknown")
    elif age > BACKUP_MAX_AGE_H:
        r.add("backups", WARN, f"newest verified backup {name} is {age:.0f} h old "
              f"(> {BACKUP_MAX_AGE_H:.0f} h)")
        r.next(8, "invoke backup", "the newest verified backup is old")
    else:
        r.add("backups", OK, f"newest verified backup {name}, {age * 60:.0f} min old")


def _audit(r: Report, settings: Settings) -> None:
    try:
        records = [x for x in audit.read(settings) if x.get("database") == settings.database]
    except OSError as exc:
        r.add("audit", UNKNOWN, f"cannot read {settings.audit_log}: {exc.strerror}")
        return
    if not records:
        r.add("audit", OK, f"no audit records yet ({settings.audit_log})")
        return
    last = records[-1]
    line = (f"last: {last.get('action')} by {last.get('operator')} at {last.get('ts')}: "
            f"{last.get('result', '?')}")
    if last.get("result") not in (None, "ok", "success", "succeeded"):
        r.add("audit", WARN, line, [str(last.get("error") or last.get("message") or "")])
    else:
        r.add("audit", OK, line)


def format_report(rep: dict) -> str:
    width = max(len(c["name"]) for c in rep["checks"]) if rep["checks"] else 10
    lines = [f"dbops doctor: {rep['target']} [{rep['environment']}]"]
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", UNKNOWN: "??  "}
    for c in rep["checks"]:
        lines.append(f"{marks[c['status']]}  {c['name']:<{width}}  {c['summary']}")
        lines += [f"      {'':<{width}}  - {d}" for d in c["details"][:6] if d]
    lines.append(f"next: {rep['next']}" + (f"   # {rep['next_reason']}"
                                           if rep["next"] != "nothing to do" else ""))
    return "\n".join(lines)
