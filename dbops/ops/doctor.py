"""invoke doctor: a read-only health check on one screen, ending with the one next command.

One agent process answers ``doctor.facts`` (the connection classified by cause, the server's
role, the dbops lock holder, status, the lock modes the pending revisions need, INVALID
indexes, sessions and their locks, pg_dump), ``recover.inspect`` (live fingerprint),
``recover.expected`` only when the expected schemas are not cached, ``revisions.hashes`` and,
at head, ``doctor.models``. The host adds pg_dump's version (through the seam), the backup
folder and the audit record. A part that cannot be answered is "unknown", never a crash.

The checks run in the order of CHECKS, which is the runbook's order (docs/recovery.md); the
first check that proposes a command gives ``next:``. Each is one function here (connectivity
in doctor_connect.py; Check and Facts, what they return and read, in doctor_facts.py):

 1. connectivity    refused / auth failed / too many connections / database missing / a
                    read-only standby or read-only database: each its own command
 2. dbops lock      another dbops operation holds this database's lock: wait for it
 3. indexes         an INVALID index: drop it
 4. revision files  a revision file that does not parse, or was edited after it was applied
 5. isolation       env.py follows dbops' target (probed on scratch databases): else every
                    scratch step refuses; the env.py change (README "Your own project")
 6. schema          the live schema vs the current revision: recover; the database ahead of
                    the code: find the code; a half-applied revision's leftover index: drop it
 7. heads           several heads: merge them
 8. sessions        sessions holding a lock that conflicts with a mode the pending revisions
                    need: terminate (after checking who owns it)
 9. pg_dump         a pg_dump whose locks conflict with the pending revisions: wait for it
10. models          the models differ from the migrations (at head): write the revision
11. revision        pending revisions: migrate
12. scratch         a scratch database (dbops_scratch_*: touched set, rehearsal, restore test
                    or drill, check, recover, probe) left by a killed run: drop it; one in use
                    by a running operation is said, never dropped
13. rehearsal       pending revisions never rehearsed (said, not a command: migrate stays next)
14. backups         no verified backup of this database within 1.5 × the backup schedule; an
                    interrupted or damaged backup file (named): backup
15. schedule        the last tick of DBOPS_BACKUP_SCHEDULE (more than the grace ago) has no
                    verified backup: backup (doctor_schedule.py)
16. archiving       WAL archiving to pgBackRest failing (pg_stat_archiver: the last failure,
                    the archive_command), waiting for a restart, or a side instance left by an
                    interrupted point-in-time restore; quiet when archiving is off (ops/pitr.py)
17. restore drill   the last drill failed or is older than DBOPS_DRILL_MAX_AGE_DAYS: drill
18. audit           the last audit record (never a command)
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from dbops import audit, catalog, seam
from dbops.agent import fingerprint as fpmod
from dbops.agent import pglocks
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError, as_command
from dbops.ops import freshness, settle
from dbops.ops.doctor_connect import connectivity
from dbops.ops.doctor_facts import (  # noqa: F401  (Facts, Check, helpers: the module's API)
    FAIL,
    IDLE_TX_WARN_S,
    OK,
    SCHEMA_ACTIONS,
    UNKNOWN,
    WARN,
    Check,
    Facts,
    Unknown,
    _age,
    _ident,
    needs_db,
    newest_verified_backup,
    pg_dump_version,
    psql_command,
)
from dbops.ops.doctor_schedule import schedule
from dbops.ops.pitr import archiving

DUMP_APPS = ("pg_dump", "pg_dumpall", "pg_restore")


# --- 2. dbops lock ------------------------------------------------------------------------------
@needs_db
def dbops_lock(f: Facts) -> Check:
    if "dbops_lock" in f.errors:
        return Check(
            "dbops lock", UNKNOWN, f"could not read the dbops lock: {f.errors['dbops_lock']}"
        )
    h = f.raw.get("dbops_lock")
    if not h:
        return Check("dbops lock", OK, f"no dbops operation holds {f.settings.database}'s lock")
    what = h.get("purpose") or h.get("application_name") or "an operation"
    kill = psql_command(f"SELECT pg_terminate_backend({h['pid']})")
    who = (
        f"pid {h['pid']} '{h['application_name']}' ({what} by {h.get('operator') or h['user']},"
        f" user {h['user']} from {h['client']}, since {h['since']})"
    )
    return Check(
        "dbops lock",
        WARN,
        f"a dbops {what} is running: {who}",
        [
            "every migrate/backup/restore/rollback/stamp/recover --apply fails at once as "
            "busy until it ends; the schema may be mid-change: read nothing else yet",
            f"if that process is gone for good (its host died): {kill}",
        ],
        next=f"invoke doctor   (after the dbops {what} pid {h['pid']} finishes)",
        why="another dbops operation holds the lock",
        data={"holder": h},
    )


# --- 3. indexes ---------------------------------------------------------------------------------
@needs_db
def indexes(f: Facts) -> Check:
    inv = f.need("invalid_indexes", "indexes", "could not list indexes")
    if not inv:
        return Check("indexes", OK, "no INVALID indexes")
    first = _ident(inv[0]["schema"] + "." + inv[0]["index"].split(".")[-1])
    return Check(
        "indexes",
        FAIL,
        f"{len(inv)} INVALID index(es): " + ", ".join(f"{i['index']} on {i['table']}" for i in inv),
        [
            f"{i['definition']}  (left by a failed CREATE INDEX CONCURRENTLY: drop it, then re-run "
            f"the migration)"
            for i in inv
        ],
        next=psql_command(f"DROP INDEX CONCURRENTLY IF EXISTS {first}"),
        why="an INVALID index",
    )


# --- 4. revision files ----------------------------------------------------------------------------
def _recorded_hashes(settings: Settings) -> dict[str, tuple[str, str]]:
    """{revision: (file hash, ts)}: each revision's file as the audit record last saw it applied
    (or undone) on this database."""
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
    return recorded


@needs_db
def revision_files(f: Facts) -> Check:
    if f.kinds.get("status") == "script":
        return _unreadable_script(f)
    if not f.status:
        return Check("revision files", UNKNOWN, "the alembic state could not be read")
    try:
        hashes = f.agent.call("revisions.hashes")
    except AgentError as exc:
        return Check(
            "revision files",
            UNKNOWN,
            f"cannot hash the revision files (agent op revisions.hashes: {exc.message})",
        )
    if isinstance(hashes, dict) and isinstance(hashes.get("hashes"), dict):
        hashes = hashes["hashes"]
    recorded = _recorded_hashes(f.settings)
    if not recorded:
        return Check(
            "revision files",
            OK if hashes else UNKNOWN,
            "no audit record with revision hashes for this database yet: nothing to compare",
        )
    paths = {h["revision"]: h.get("path") for h in f.status["history"]}
    edited = [
        (rev, ts) for rev, (h, ts) in sorted(recorded.items()) if rev in hashes and hashes[rev] != h
    ]
    if not edited:
        return Check(
            "revision files",
            OK,
            f"{len(recorded)} applied revision file(s) unchanged since applied",
        )
    p = paths.get(edited[0][0])
    return Check(
        "revision files",
        WARN,
        f"{len(edited)} revision file(s) edited after they were "
        f"applied: {', '.join(rev for rev, _ in edited)}",
        [
            f"{rev} ({Path(paths.get(rev) or rev).name}) applied {ts}, file changed since"
            for rev, ts in edited
        ],
        next=f"git log -p -- {shlex.quote(p) if p else edited[0][0]}",
        why="a revision file changed after it was applied",
    )


def _unreadable_script(f: Facts) -> Check:
    d = (f.raw.get("error_details") or {}).get("status") or {}
    path, markers = d.get("file"), d.get("conflict_markers") or []
    what = (
        f"merge-conflict markers at line(s) {', '.join(map(str, markers))}"
        if markers
        else d.get("error") or f.errors.get("status")
    )
    fix = "resolve the merge-conflict markers" if markers else "fix it"
    return Check(
        "revision files",
        FAIL,
        f"a revision file does not load: "
        f"{Path(path).name if path else 'the script directory'}: {what}",
        [
            f.errors.get("status", ""),
            "alembic cannot read the history until it loads: "
            "migrate, rollback and recover would all fail; nothing in the database is wrong",
        ],
        next=f"${{EDITOR:-vi}} {shlex.quote(path)}   ({fix}; then: invoke doctor)"
        if path
        else "invoke check   (after fixing the script directory)",
        why="a revision file does not load",
        data={"file": path, "line": d.get("line")},
    )


# --- 5. isolation ---------------------------------------------------------------------------------
@needs_db
def isolation(f: Facts) -> Check | None:
    """env.py follows dbops' target: probed on two scratch databases in turn (agent op
    doctor.env_target, dbops/agent/guard.py). When it does not, every scratch step (rehearse,
    recover's expected schemas, check's stairway, migrate's touched backup) is refused by the
    guard before env.py's first statement: the fix is a few lines of env.py."""
    if f.kinds.get("status") == "script":
        return None  # env.py's revisions do not load: the revision files check says so
    try:
        r = f.agent.call("doctor.env_target")
    except AgentError as exc:
        if exc.kind == "live_changed":  # never expected: the guard stops env.py first
            return Check("isolation", FAIL, exc.message, next="invoke recover", why=exc.message)
        return Check("isolation", UNKNOWN, f"could not probe env.py: {exc.message}")
    if r.get("follows"):
        how = (
            "it uses the connection dbops hands it"
            if r.get("via") == "connection"
            else "it connects where dbops points it"
        )
        return Check("isolation", OK, f"env.py follows dbops' target ({how}; probed on scratch)")
    if r.get("follows") is None:
        return Check("isolation", UNKNOWN, f"could not probe env.py: {r.get('error')}")
    env_py = r.get("env_py") or str(f.settings.alembic_ini.parent / "env.py")
    return Check(
        "isolation",
        FAIL,
        "env.py does not follow dbops' target: rehearse, recover, check and migrate's touched "
        "backup refuse to run (the guard stops env.py before its first statement)",
        [
            r.get("error") or "",
            "in env.py's run_migrations_online: use config.attributes.get('connection') when "
            "set, else the URL config.get_main_option('sqlalchemy.url') (dbops sets both); keep "
            "your own variable as the last fallback",
        ],
        next=f"${{EDITOR:-vi}} {shlex.quote(env_py)}   (README: Your own project; then: "
        f"invoke doctor)",
        why="env.py connects somewhere else than dbops aims it",
        data={"connected_to": r.get("connected_to"), "expected": r.get("expected")},
    )


# --- 6. schema ------------------------------------------------------------------------------------
def _half_applied(a: dict, half: str, current: list[str], details: list) -> tuple:
    """DIRTY: ``half`` is half-applied; when it left an index behind, the command that drops
    it (``details`` gains the steps). Returns (summary, next, why)."""
    steps, idx = a["steps"], a["idx"]
    summary = (
        f"DIRTY: revision {half} is half-applied (a non-transactional step ran, the "
        f"rest did not); alembic_version still says {', '.join(current)}"
    )
    nxt, why = "invoke recover", "the schema does not match the current revision"
    leftover = _leftover_indexes(steps[idx]["fingerprint"], a["live_fp"])
    if leftover:
        nxt = psql_command(f"DROP INDEX CONCURRENTLY IF EXISTS {_ident(_qualified(leftover[0]))}")
        why = f"{half} left index {leftover[0]} behind: drop it, then invoke migrate"
        details.append(
            f"remove what {half} left ({', '.join(leftover)}) one index at a time, "
            f"then invoke migrate runs {half} whole"
        )
    return summary, nxt, why


def _schema_differs(a: dict, current: list[str], note: str) -> Check:
    """FAIL: the live schema is not the current revision's (half-applied, another revision's,
    or no revision's)."""
    matches = a["matches"]
    diffs = fpmod.diff(a["steps"][a["idx"]]["fingerprint"], a["live_fp"])
    details = diffs[:8] + (
        [f"… and {len(diffs) - 8} more (invoke recover)"] if len(diffs) > 8 else []
    )
    if matches:  # the record is wrong, not the schema: the diff against it is noise
        details = []
    half = a["half"]
    nxt, why = "invoke recover", "the schema does not match the current revision"
    if half:
        summary, nxt, why = _half_applied(a, half, current, details)
    elif matches:
        summary = (
            f"live schema is not {', '.join(current) or 'base'}: it matches "
            f"{' = '.join(matches)} exactly"
        )
    else:
        summary = (
            f"live schema differs from {', '.join(current) or 'base'} "
            f"({len(diffs)} difference(s)) and matches no revision"
        )
    return Check(
        "schema", FAIL, summary + note, details, next=nxt, why=why, data={"half_applied": half}
    )


@needs_db
def schema(f: Facts) -> Check | None:
    if not f.status:
        return None
    a = f.analysis()
    if "error" in a:
        return Check("schema", UNKNOWN, a["error"])
    st, idx = f.status, a["idx"]
    current = sorted(st["current"])
    src = a["source"]
    note = (
        "" if src["source"] == "cache" else f" (expected schemas built in {src['seconds']:.1f} s)"
    )
    matches = a["matches"]
    if st["unknown_current"] and not matches:
        return _ahead_of_code(f, a, note)
    if idx is None:  # an unknown version id (or a head set no linear pass produces)
        where = f"matches {' = '.join(matches)} exactly" if matches else "matches no revision"
        return Check(
            "schema",
            FAIL,
            f"alembic_version says {', '.join(current)}; the live schema {where}{note}",
            next="invoke recover",
            why="the version record and the schema disagree",
        )
    if a["at_current"]:
        return Check(
            "schema", OK, f"live schema matches {', '.join(current) or 'base'} exactly{note}"
        )
    return _schema_differs(a, current, note)


def _qualified(name: str) -> str:
    return name if "." in name else f"public.{name}"


def _leftover_indexes(expected: dict, live: dict) -> list[str]:
    """The indexes live has beyond ``expected``, when that is ALL it has beyond it (nothing
    missing, nothing else changed): what a half-applied CREATE INDEX step left."""
    exp, liv = fpmod.items(expected), fpmod.items(live)
    extra = [k for k, v in liv.items() if exp.get(k) != v]
    gone = [k for k in exp if k not in liv]
    if gone or not extra or any(k[0] != "index" or k not in liv or k in exp for k in extra):
        return []
    return sorted(k[1] for k in extra)


def _ahead_of_code(f: Facts, a: dict, note: str) -> Check:
    st = f.status
    unknown = st["unknown_current"]
    steps = a["steps"]
    head = next(
        (s for s in reversed(steps) if sorted(s["heads"]) == sorted(st["heads"])), steps[-1]
    )
    diffs = fpmod.diff(head["fingerprint"], a["live_fp"])
    return Check(
        "schema",
        FAIL,
        f"the database is AHEAD of this code: alembic_version says "
        f"{', '.join(unknown)}, a revision this checkout does not have, and the live "
        f"schema matches no revision it has (compared with head {', '.join(st['heads'])}: "
        f"{len(diffs)} difference(s)){note}",
        [
            "the fix is in the code: deploy or check out the code that has that revision "
            "file (never restore, drop or stamp to make the database fit older code)"
        ]
        + diffs[:6],
        next=f"git log --all --oneline -S {shlex.quote(unknown[0])}   (find the commit "
        f"with revision {unknown[0]}, then deploy or check it out)",
        why="the database is ahead of the code",
        data={"ahead_of_code": unknown},
    )


# --- 6. heads -------------------------------------------------------------------------------------
@needs_db
def heads(f: Facts) -> Check | None:
    st = f.status
    if not st:
        return None
    hs = st["heads"]
    msgs = {h["revision"]: h["message"] for h in st["history"]}
    if len(hs) > 1:
        return Check(
            "heads",
            FAIL,
            f"{len(hs)} heads: {', '.join(hs)} — merge them before migrating",
            [f"{h}  {msgs.get(h, '')}" for h in hs],
            next=f"alembic -c {f.settings.alembic_ini} merge -m 'merge heads' {' '.join(hs)}",
            why="several heads",
        )
    if not hs:
        return Check("heads", WARN, "the script directory has no revisions")
    return Check("heads", OK, f"1 head: {hs[0]}  {msgs.get(hs[0], '')}")


# --- 7. sessions and 8. pg_dump: the locks the pending revisions need -----------------------------
LOCK_NEEDS_SOURCE = "the pending revisions' offline SQL"


def lock_needs(f: Facts) -> dict[str, list[str]]:
    """{table: [lock modes]} the pending revisions will take: from their offline SQL (agent,
    pglocks.modes_for_sql). The hook for a rehearsal record: when one exists for these
    revisions, the locks it measured replace this estimate here (and LOCK_NEEDS_SOURCE)."""
    return f.raw.get("pending_locks") or {}


def blocking_locks(f: Facts) -> dict[int, list[str]]:
    """{pid: ["<held mode> on <table> (conflicts with <needed>)"]}: only granted locks that
    conflict with a mode a pending revision needs on the same table."""
    needs = lock_needs(f)
    out: dict[int, list[str]] = {}
    for lk in f.raw.get("locks") or []:
        if not lk["granted"]:
            continue
        wanted = [
            m for m in needs.get(lk["table"].split(".")[-1], []) if pglocks.conflicts(lk["mode"], m)
        ]
        if wanted:
            out.setdefault(lk["pid"], []).append(
                f"{lk['mode']} on {lk['table']} (conflicts with {', '.join(wanted)})"
            )
    return out


def _is_dump(app: str | None) -> bool:
    return (app or "") in DUMP_APPS


def _blockers(f: Facts, locks: list[dict]) -> dict[int, list[str]]:
    """blocking_locks, except those held by a pg_dump (doctor's pg_dump check names them)."""
    return {
        pid: held
        for pid, held in blocking_locks(f).items()
        if not any(_is_dump(lk["application_name"]) for lk in locks if lk["pid"] == pid)
    }


def _blocker_lines(blockers: dict, locks: list[dict], by_pid: dict) -> list[str]:
    lines = []
    for pid, held in blockers.items():
        lk = next(x for x in locks if x["pid"] == pid)
        q = by_pid.get(pid, {}).get("query") or lk.get("query")
        lines.append(
            f"pid {pid} '{lk['application_name']}' ({lk['state']}, transaction open "
            f"{lk['xact_seconds']} s) holds {', '.join(held)}" + (f": {q}" if q else "")
        )
    return lines


def _harmless(locks: list[dict], blockers: dict) -> list[int]:
    """Sessions holding locks that do not conflict with the pending revisions' needs."""
    return sorted(
        {
            lk["pid"]
            for lk in locks
            if lk["granted"] and lk["pid"] not in blockers and not _is_dump(lk["application_name"])
        }
    )


def _harmless_lines(harmless: list[int], locks: list[dict], by_pid: dict) -> list[str]:
    lines = []
    for pid in harmless:
        held = sorted({f"{x['mode']} on {x['table']}" for x in locks if x["pid"] == pid})
        lines.append(
            f"pid {pid} '{by_pid.get(pid, {}).get('application_name', '?')}' holds "
            f"{', '.join(held)}: no conflict with what the pending revisions need"
        )
    return lines


def _busy_lines(idle: list[dict], active: list[dict], harmless: list[int]) -> list[str]:
    return [
        f"pid {s['pid']} '{s['application_name']}' idle in transaction for "
        f"{s['xact_seconds']} s: {s['query']}"
        for s in idle
        if s["pid"] not in harmless
    ] + [
        f"pid {s['pid']} '{s['application_name']}' running for {s['query_seconds']} s"
        + (f" (waiting on {s['waiting']})" if s["waiting"] else "")
        + f": {s['query']}"
        for s in active
    ]


def _sessions_verdict(
    blockers: dict, idle: list[dict], active: list[dict], needs: dict, details: list, data: dict
) -> Check:
    """FAIL when a session blocks the pending migrations; WARN for long idle-in-transaction or
    running sessions; else OK."""
    need_txt = "; ".join(f"{t}: {', '.join(m)}" for t, m in needs.items())
    if blockers:
        pid = next(iter(blockers))
        return Check(
            "sessions",
            FAIL,
            f"{len(blockers)} session(s) hold locks that conflict with "
            f"what the pending migrations need ({need_txt}): migrate would time out "
            f"behind them",
            details,
            next=psql_command(f"SELECT pg_terminate_backend({pid})")
            + "   (after checking who owns it; or wait for it to end)",
            why=f"pid {pid} holds a lock a pending migration needs",
            data=data,
        )
    if [s for s in idle if (s["xact_seconds"] or 0) >= IDLE_TX_WARN_S] or active:
        return Check(
            "sessions",
            WARN,
            f"{len(idle)} idle-in-transaction, {len(active)} "
            f"long-running session(s); none blocks the pending migrations",
            details,
            data=data,
        )
    if idle:
        return Check(
            "sessions",
            OK,
            f"{len(idle)} idle-in-transaction session(s), none holding "
            f"locks pending migrations need",
            details,
            data=data,
        )
    extra = f"; pending migrations need {need_txt}" if needs else ""
    return Check(
        "sessions", OK, f"no long or idle-in-transaction sessions{extra}", details, data=data
    )


@needs_db
def sessions(f: Facts) -> Check:
    ss = f.need("sessions", "sessions", "could not read pg_stat_activity")
    locks = f.raw.get("locks") or []
    blockers = _blockers(f, locks)
    by_pid = {s["pid"]: s for s in ss}
    harmless = _harmless(locks, blockers)
    idle = [
        s for s in ss if s["state"].startswith("idle in transaction") and s["pid"] not in blockers
    ]
    active = [s for s in ss if s["state"] == "active"]
    details = [
        *_blocker_lines(blockers, locks, by_pid),
        *_harmless_lines(harmless, locks, by_pid),
        *_busy_lines(idle, active, harmless),
    ]
    needs = lock_needs(f)
    data = {
        "lock_needs": needs,
        "lock_needs_source": LOCK_NEEDS_SOURCE,
        "blockers": sorted(blockers),
    }
    if f.raw.get("pending_tables") is None and f.pending:
        details.append(
            f"tables touched by pending migrations: unknown ({f.errors.get('pending_tables')})"
        )
    blocking = blockers if f.pending else {}  # a conflict matters only with revisions pending
    return _sessions_verdict(blocking, idle, active, needs, details, data)


@needs_db
def pg_dump(f: Facts) -> Check:
    dumps = f.need("pg_dump", "pg_dump", "could not read pg_stat_activity")
    if not dumps:
        return Check("pg_dump", OK, "no pg_dump running")
    blocking = blocking_locks(f)
    d = next((x for x in dumps if x["pid"] in blocking), dumps[0])
    details = [
        f"pid {x['pid']} {x['application_name']} on {x['database']} since {x['since']}"
        + (f": holds {', '.join(blocking[x['pid']])}" if x["pid"] in blocking else "")
        for x in dumps
    ]
    line = (
        f"{d['application_name']} running: pid {d['pid']} on {d['database']} since {d['since']} "
        f"({d['seconds']} s)"
    )
    if f.pending and d["pid"] in blocking:
        return Check(
            "pg_dump",
            WARN,
            f"{line}; its locks conflict with the pending migrations",
            details + ["do not terminate it (it may be the backup you will need): wait"],
            next=f"invoke migrate   (after {d['application_name']} pid {d['pid']} finishes)",
            why="a dump is running and its locks would block the migration",
        )
    return Check(
        "pg_dump",
        WARN if f.pending else OK,
        line + ("; it does not block the pending migrations" if f.pending else ""),
        details,
    )


# --- 9. models ------------------------------------------------------------------------------------
@needs_db
def models(f: Facts) -> Check | None:
    st = f.status
    if not st:
        return None
    if not st["at_head"]:
        return Check(
            "models",
            UNKNOWN,
            "compared at head only (alembic's autogenerate needs the database at head)",
        )
    a = f.analysis()
    if not a.get("at_current"):
        return Check("models", UNKNOWN, "not compared: the live schema is not the head's")
    try:
        diff = f.agent.call("doctor.models")["diff"]
    except AgentError as exc:
        return Check("models", UNKNOWN, f"could not compare the models: {exc.message}")
    if not diff:
        return Check("models", OK, "the models match the migrations (autogenerate finds nothing)")
    return Check(
        "models",
        FAIL,
        f"the models differ from the migrations: {len(diff)} change(s) no revision makes",
        diff[:8],
        next=f"alembic -c {f.settings.alembic_ini} revision --autogenerate -m "
        f"'<describe the change>'   (review it, then invoke check, invoke migrate)",
        why="the models are ahead of the migrations",
    )


# --- 10. revision ---------------------------------------------------------------------------------
def _state_unreadable(f: Facts) -> Check:
    if f.kinds.get("status") == "script":
        return Check("revision", UNKNOWN, "cannot read the history (see revision files)")
    return Check(
        "revision",
        FAIL,
        f"cannot read the alembic state: {f.errors.get('status')}",
        next="invoke recover",
        why="the alembic state cannot be read",
    )


@needs_db
def revision(f: Facts) -> Check:
    st = f.status
    if not st:
        return _state_unreadable(f)
    msgs = {h["revision"]: h["message"] for h in st["history"]}
    current, pending = st["current"], st["pending"]
    f.result.update(current=current, heads=st["heads"], pending=pending)
    insp = f.insp()
    populated = bool(insp and insp["live"]["fingerprint"]["tables"])
    has_table = insp["version_table"] if insp else bool(current)
    if st["unknown_current"]:
        return Check(
            "revision",
            FAIL,
            f"alembic_version names {', '.join(st['unknown_current'])}, "
            f"which the script directory does not have",
            next="invoke recover",
            why="unknown version id",
        )
    if not current and populated:
        return Check(
            "revision",
            FAIL,
            ("no alembic_version table" if not has_table else "alembic_version is empty")
            + " but the database has tables",
            next="invoke recover",
            why="a populated database without a version row",
        )
    if len(current) > 1 and len(current) > len(st["heads"]):
        return Check(
            "revision",
            FAIL,
            f"alembic_version holds {len(current)} rows "
            f"({', '.join(current)}) for {len(st['heads'])} head(s): an extra row "
            f"(a manual INSERT, or a stamp without --purge)",
            next="invoke recover",
            why="extra version rows",
        )
    if st["at_head"]:
        return Check("revision", OK, f"at head {', '.join(current)}")
    where = ", ".join(current) if current else "base (empty database)"
    return Check(
        "revision",
        WARN,
        f"at {where}; {len(pending)} pending: {', '.join(pending)}",
        [f"{p}  {msgs.get(p, '')}" for p in pending],
        next="invoke migrate",
        why="pending revisions",
    )


# --- 11. scratch ------------------------------------------------------------------------------
def _drop_database(name: str) -> str:
    quoted = '"' + name.replace('"', '""') + '"'
    return psql_command(f"DROP DATABASE {quoted}")


def _scratch_line(x: dict) -> str:
    size = "size unknown" if x["bytes"] is None else f"{x['bytes'] / 1e6:.1f} MB"
    if x["in_use"]:
        return f"{x['name']} ({size}): in use by {x['made_by']}: {x['used_by']}; leave it"
    how = "that was killed" + (" (or kept with --keep)" if x["purpose"] == "rehearse" else "")
    return (
        f"{x['name']} ({size}): left by {x['made_by']} {how}; drop it: {_drop_database(x['name'])}"
    )


SCRATCH_SWEPT_BY = {  # a scratch database's purpose: the run that sweeps it
    "rehearse": "   (or: the next invoke rehearse of its database sweeps it)",
    "touched": "   (or: the next touched-set run of its database sweeps it)",
    "restoring": "   (or: the next invoke restore of this database sweeps it)",
}


@needs_db
def scratch(f: Facts) -> Check | None:
    """Scratch databases (dbops_scratch_*) on the server and this database's restore targets
    (<db>_dbops_restoring_*): each named with what made it; one that a running operation is
    using (its maker's lock held, or a session in it) is said to be in use, never offered for
    dropping; the others were left by killed runs: the command that drops the first is next
    (dbops/agent/scratch.py)."""
    try:
        found = f.agent.call("scratch.leftovers")["scratch"]
    except AgentError as exc:
        return Check("scratch", UNKNOWN, f"cannot list the scratch databases: {exc.message}")
    if not found:
        return None
    left = [x for x in found if not x["in_use"]]
    details = [_scratch_line(x) for x in left + [x for x in found if x["in_use"]]]
    if not left:
        return Check(
            "scratch",
            OK,
            f"{len(found)} scratch database(s), all in use by running dbops operations",
            details,
            data={"scratch": found},
        )
    first = left[0]
    sweep = SCRATCH_SWEPT_BY.get(first["purpose"], "")
    return Check(
        "scratch",
        WARN,
        f"{len(left)} scratch database(s) left on the server by killed "
        f"dbops runs" + (f"; {len(found) - len(left)} in use" if len(found) > len(left) else ""),
        details,
        next=_drop_database(first["name"]) + sweep,
        why=f"a killed {first['purpose']} run's scratch database takes room",
        data={"scratch": found, "leftovers": left},
    )


# --- 12. rehearsal --------------------------------------------------------------------------------
@needs_db
def rehearsal(f: Facts) -> Check | None:
    """Whether the pending revisions have a stored rehearsal (dbops/ops/rehearse.py; never a
    command of its own while revisions are pending: migrate stays the next step). Copies left
    by killed rehearsals are the scratch check's."""
    from dbops.ops import rehearse as rehearse_op

    st = f.status
    if not st or not st["pending"]:
        return None
    try:
        hashes = f.agent.call("revisions.hashes")
    except AgentError:
        hashes = {}
    hashes = hashes.get("hashes", hashes) if isinstance(hashes, dict) else {}
    pending = [{"revision": r, "sha256": hashes.get(r)} for r in st["pending"]]
    rep = rehearse_op.matching(f.settings, st["current"], pending)
    if rep is None:
        return Check(
            "rehearsal",
            WARN,
            f"the {len(pending)} pending revision(s) were never "
            f"rehearsed: invoke rehearse shows what they lock, and for how long, on a "
            f"copy of this database",
        )
    verdicts = [f"{r['revision']}: {r['verdict']}" for r in rep["revisions"]]
    return Check(
        "rehearsal",
        OK,
        f"rehearsed {rep['finished_at']}: predicted {rep['predicted_seconds']:.1f} s",
        verdicts,
    )


# --- 12. backups ----------------------------------------------------------------------------------
def _backup_folder_unfit(s: Settings) -> Check | None:
    """FAIL when the next backup cannot be written there (permissions, space, a symlink)."""
    from dbops import safefile  # read-only look: doctor writes nothing into the backup folder

    unfit = safefile.problem(
        Path(s.backup_dir), min_free=int(s.get("DBOPS_BACKUP_RESERVE_MB") * 1e6)
    )
    if unfit is None:
        return None
    return Check(
        "backups",
        FAIL,
        f"the next backup cannot be written: {unfit.message}",
        next=unfit.next_command,
        why=f"backup folder {unfit.kind.replace('_', '-')}",
        data={"folder_problem": unfit.kind},
    )


def _backup_files(s: Settings) -> tuple[list[dict], list[Path]]:
    """The catalog's backups of this database and the .partial files interrupted ones left."""
    entries = catalog.list_backups(s, database=s.database)
    folder = Path(s.backup_dir)
    pat = catalog.partial_pattern(s.database)
    partials = sorted(p for p in folder.iterdir() if pat.match(p.name)) if folder.is_dir() else []
    return entries, partials


def _backup_notes(partials: list[Path], damaged: list[dict]) -> list[str]:
    return [
        f"{p.name}: left by an interrupted backup ({p.stat().st_size} bytes, "
        f"{datetime.fromtimestamp(p.stat().st_mtime, UTC):%Y-%m-%dT%H:%M:%SZ}); not a "
        f"backup; the next invoke backup removes it"
        for p in partials
    ] + [
        f"{Path(b['path']).name}: DAMAGED, cannot be restored: {'; '.join(b['problems'])}"
        for b in damaged
    ]


def _no_usable_backup(
    s: Settings, newest: dict | None, partials: list, fresh_damaged: list, notes: list, data: dict
) -> Check:
    """WARN: no verified backup, or an interrupted or damaged one newer than it."""
    if newest is None:
        what = f"no verified backup of {s.database} in {s.backup_dir}"
    else:
        what = f"newest verified backup {Path(newest['path']).name}"
    bad = ([f"{len(partials)} interrupted (.partial)"] if partials else []) + (
        [f"{len(fresh_damaged)} damaged newer one(s)"] if fresh_damaged else []
    )
    return Check(
        "backups",
        WARN,
        what + (f"; {', '.join(bad)}" if bad else ""),
        notes,
        next="invoke backup",
        why="no usable recent backup" if newest is None else "an interrupted or damaged backup",
        data=data,
    )


def _older_damaged(name: str, damaged: list[dict], notes: list, data: dict) -> Check:
    """WARN: a verified backup exists; older damaged files: the command that removes one."""
    b = damaged[0]
    files = [b["path"]] + (
        [str(catalog.manifest_path(Path(b["path"])))] if b.get("manifest") else []
    )
    return Check(
        "backups",
        WARN,
        f"newest verified backup {name}; {len(damaged)} older "
        f"damaged file(s) that cannot be restored",
        notes,
        next="rm -- "
        + " ".join(shlex.quote(x) for x in files)
        + f"   (a newer verified backup exists: {name})",
        why="a damaged backup file",
        data=data,
    )


def _backup_age(s: Settings, newest: dict, data: dict) -> Check:
    """The newest verified backup's age against the backup schedule (1.5 ×)."""
    age = _age(newest.get("created_at"))
    name = Path(str(newest.get("path", "?"))).name
    if age is None:
        return Check("backups", WARN, f"newest verified backup {name}: age unknown", data=data)
    fresh, message, command = freshness.backup_freshness(s)  # 1.5 × the backup schedule
    if not fresh:
        return Check(
            "backups",
            WARN,
            f"{name}: {message}",
            next=command,
            why="the newest verified backup is old",
            data=data,
        )
    return Check("backups", OK, f"newest verified backup {name}, {age * 60:.0f} min old", data=data)


def backups(f: Facts) -> Check:
    s = f.settings
    if (unfit := _backup_folder_unfit(s)) is not None:
        return unfit
    try:
        entries, partials = _backup_files(s)
    except Exception as exc:
        return Check(
            "backups",
            UNKNOWN,
            f"age of the newest verified backup: unknown (the backup "
            f"catalog could not be read: {exc})",
        )
    newest = next((b for b in entries if b["verified"]), None)
    damaged = [b for b in entries if not b["verified"]]
    fresh_damaged = [b for b in damaged if not newest or b["created_at"] > newest["created_at"]]
    notes = _backup_notes(partials, damaged)
    data = {
        "partial_files": [str(p) for p in partials],
        "damaged": [{"path": b["path"], "problems": b["problems"]} for b in damaged],
    }
    if partials or fresh_damaged or newest is None:
        return _no_usable_backup(s, newest, partials, fresh_damaged, notes, data)
    if damaged:
        return _older_damaged(Path(str(newest.get("path", "?"))).name, damaged, notes, data)
    return _backup_age(s, newest, data)


# --- 13. restore drill ----------------------------------------------------------------------------
def restore_drill(f: Facts) -> Check:
    """The last drill (invoke drill) passed and is recent; never drilled warns only once
    backups are older than a drill may be (dbops/ops/freshness.py)."""
    ok, message, command = freshness.drill_freshness(f.settings)
    if ok:
        return Check("restore drill", OK, message)
    return Check(
        "restore drill",
        WARN,
        message,
        next=command,
        why="nobody has proven a recent backup restores",
    )


# --- 14. audit ------------------------------------------------------------------------------------
def audit_record(f: Facts) -> Check:
    s = f.settings
    try:
        records = [x for x in audit.read(s, intents=False) if x.get("database") == s.database]
    except OSError as exc:
        return Check("audit", UNKNOWN, f"cannot read {s.audit_log}: {exc.strerror}")
    orphans = settle.unsettled(s)  # an applying line may be the only line there is
    if orphans:
        return _unsettled(f, orphans)
    if not records:
        return Check("audit", OK, f"no audit records yet ({s.audit_log})")
    last = records[-1]
    line = (
        f"last: {last.get('action')} by {last.get('operator')} at {last.get('ts')}: "
        f"{last.get('result', '?')}"
    )
    if last.get("result") not in (None, "ok", "success", "succeeded"):
        return Check("audit", WARN, line, [str(last.get("error") or last.get("message") or "")])
    return Check("audit", OK, line)


def _unsettled(f: Facts, orphans: list[dict]) -> Check:
    """An "applying" line with no outcome: its process died at the commit (dbops/ops/settle.py).
    Whether the revision committed is read from the database."""
    details = []
    for rec in orphans:
        said = ""
        if f.agent is not None:
            try:
                revisions = [] if settle.rewrites_rows(rec) else [rec.get("revision")]
                facts = f.agent.call("settle.read", revisions=revisions)
                said = f"; the version row says {settle.verdict(rec, settle.committed(rec, facts))}"
            except OpsError as exc:
                said = f"; whether it committed cannot be read now: {exc.message}"
        details.append(settle.describe(rec) + said)
    return Check(
        "audit",
        WARN,
        f"{len(orphans)} operation(s) died while applying a revision: no outcome recorded",
        details,
        next=f"{settle.SETTLE_COMMAND}   (records the outcome the database shows; the next "
        f"migrate, rollback or stamp does it too)",
        why="an audit record without its outcome",
        data={"unsettled": [r.get("op_id") for r in orphans]},
    )


# The runbook's order (docs/recovery.md): displayed in this order; the first proposal is next.
CHECKS: tuple[Callable[[Facts], Check | None], ...] = (
    connectivity,
    dbops_lock,
    indexes,
    revision_files,
    isolation,
    schema,
    heads,
    sessions,
    pg_dump,
    models,
    revision,
    scratch,
    rehearsal,
    backups,
    schedule,
    needs_db(archiving),
    restore_drill,
    audit_record,
)


def run_checks(f: Facts) -> list[Check]:
    out = []
    for fn in CHECKS:
        try:
            ch = fn(f)
        except Unknown as exc:  # the check could not read what it needs: it says so
            ch = exc.check
        except Exception as exc:  # a bug in one check must not hide the others (or crash)
            ch = Check(
                fn.__name__.replace("_", " "),
                UNKNOWN,
                f"this check could not run: {type(exc).__name__}: {exc}",
            )
        if ch is not None:
            out.append(ch)
    return out


def doctor(settings: Settings, *, schema: bool = True) -> dict:
    target = seam.target_for(settings)
    result: dict = {
        "target": target.describe(),
        "database": settings.database,
        "environment": settings.environment,
    }
    try:
        with Agent(settings, target) as agent:
            f = Facts(settings, agent, schema=schema)
            checks = run_checks(f)
    except OpsError as exc:  # the agent could not even start (config, compose, python)
        f = Facts(settings, None, schema=schema, start_error=exc)
        checks = run_checks(f)
    st = f.status or {}
    if st:
        result["server_version"] = st.get("server_version")
        result.update(current=st["current"], heads=st["heads"], pending=st["pending"])
    result.update(f.result)
    first = next((c for c in checks if c.next), None)
    result.update(
        checks=[c.as_dict() for c in checks],
        next=as_command(first.next) if first else "nothing to do",
        next_reason=first.why if first else "all checks passed",
        next_check=first.name if first else None,
    )
    return result


def format_report(rep: dict) -> str:
    width = max(len(c["name"]) for c in rep["checks"]) if rep["checks"] else 10
    lines = [f"dbops doctor: {rep['target']} [{rep['environment']}]"]
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", UNKNOWN: "??  "}
    for c in rep["checks"]:
        lines.append(f"{marks[c['status']]}  {c['name']:<{width}}  {c['summary']}")
        lines += [f"      {'':<{width}}  - {d}" for d in c["details"][:6] if d]
    lines.append(
        f"next: {rep['next']}"
        + (f"   # {rep['next_reason']}" if rep["next"] != "nothing to do" else "")
    )
    return "\n".join(lines)
