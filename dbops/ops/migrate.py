"""invoke migrate: preflight, (offline SQL), backup, lock, upgrade one revision at a time
with lock_timeout and bounded retries, verify revision and models, audit.

Everything DB-side runs in ONE agent process; the pre-migrate backup runs between two
requests while that agent holds the lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from dbops import audit
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.status import label

Out = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


# --- shared by migrate and rollback ----------------------------------------------------
def refusal(exc: AgentError, current: list[str] | None = None, action: str = "migrate") -> OpsError:
    """A preflight/plan refusal: nothing was changed."""
    d = exc.agent_details
    details: list[str] = []
    cur = d.get("current", current)
    state = f"unchanged at {label(cur)}" if cur is not None else "unchanged"
    nxt = None
    if exc.kind == "multiple_heads":
        for h in d.get("head_info") or [{"revision": h, "message": ""} for h in d.get("heads", [])]:
            details.append(f"head {h['revision']}  {h.get('message', '')}")
        nxt = (f"alembic merge -m 'merge heads' {' '.join(d.get('heads', []))}   "
               f"(in the Alembic project; commit the merge revision, then: invoke {action})")
    elif exc.kind == "unknown_current":
        details.append("known revisions (newest first):")
        details += [f"  {c['revision']}  {c['message']}" for c in d.get("candidates", [])]
        nxt = ("invoke doctor   (find which revision the schema really matches), then: "
               "invoke stamp --to=<that revision>   (stamp changes no schema)")
    elif exc.kind == "bad_target":
        cands = d.get("candidates") or []
        if cands:
            details.append("candidates:")
            details += [f"  {c['revision']}  {c.get('message', '')}"
                        + (f"  [{', '.join(c['branch_labels'])}]" if c.get("branch_labels") else "")
                        for c in cands]
        if d.get("reason") == "below_current":
            nxt = "invoke rollback --to=REV   (rollback goes down; migrate only goes up)"
        else:
            nxt = f"invoke {action} --to=<one of the candidates>"
    elif exc.kind == "connect":
        state = "unknown (the database was not reached; nothing was done)"
        nxt = "check POSTGRES_* in .env and that the server is up (invoke up; invoke current)"
    return OpsError(exc.message, state=state, next_command=nxt, details=details)


def acquire_lock(agent: Agent, purpose: str, current: list[str], action: str) -> None:
    try:
        agent.call("lock.acquire", purpose=purpose)
    except AgentError as exc:
        if exc.kind == "locked":
            raise OpsError(exc.message, state=f"unchanged at {label(current)}",
                           next_command=f"wait for it to finish (invoke current shows the result), "
                                        f"then re-run: invoke {action}") from None
        raise


def take_backup(settings: Settings, agent: Agent, reason: str, out: Out, current: list[str],
                action: str) -> str:
    from dbops.ops import backup as backup_op  # issue 3's module

    out(f"backup ({reason}) ...")
    try:
        res = backup_op.take_backup(settings, agent, reason)
    except OpsError as exc:
        raise OpsError(f"the {reason} backup failed, so nothing was changed: {exc.message}",
                       state=f"unchanged at {label(current)}",
                       details=exc.details,
                       next_command=f"fix the backup (invoke backup), or knowingly skip it: "
                                    f"invoke {action} --no-backup") from None
    path = str(res["path"])
    out(f"backup: {path}")
    return path


def retry_wait(settings: Settings) -> float:
    """DBOPS_LOCK_RETRY_WAIT: the first backoff after a lock timeout, in seconds."""
    raw = settings.raw.get("DBOPS_LOCK_RETRY_WAIT", "1")
    try:
        return float(raw)
    except ValueError:
        raise OpsError(f"DBOPS_LOCK_RETRY_WAIT={raw!r} is not a number of seconds",
                       state="unchanged (nothing was run)") from None


def run_steps(settings: Settings, agent: Agent, revisions: list[str], direction: str,
              out: Out, done: list[dict]) -> None:
    """Apply (up) or undo (down) each revision in order, each as its own alembic run, retrying a
    lock timeout with backoff up to DBOPS_LOCK_RETRIES times (the agent re-reads the current
    revision before every attempt). Completed steps are appended to ``done``."""
    retries = max(0, settings.lock_retries)
    first_wait = retry_wait(settings)
    for rev in revisions:
        attempts = 0

        def note(rs, rev=rev) -> None:
            exc = rs.outcome.exception()
            wait = rs.next_action.sleep if rs.next_action else 0
            holders = "; ".join(f"pid {b['pid']} {b['application_name']!r} ({b['state']}, "
                                f"transaction open {b['xact_seconds']} s, locks {b['locks']})"
                                for b in exc.agent_details.get("blockers") or [])
            out(f"  lock_timeout ({settings.lock_timeout}) on {rev}, attempt {rs.attempt_number}/"
                f"{retries + 1}: {holders or 'blocker gone'}; nothing waits behind us; retrying in "
                f"{wait:.1f} s")

        retrying = Retrying(
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential_jitter(initial=first_wait, max=15, jitter=0.5),
            retry=retry_if_exception(lambda e: isinstance(e, AgentError) and e.kind == "lock_timeout"),
            before_sleep=note, reraise=True)
        t0 = time.monotonic()
        for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                res = agent.call("migrate.step", revision=rev, direction=direction,
                                 lock_timeout=settings.lock_timeout,
                                 statement_timeout=settings.statement_timeout, attempt=attempts)
        res["attempts"] = attempts
        res["wall_seconds"] = round(time.monotonic() - t0, 3)
        done.append(res)
        verb = "applied" if direction == "up" else "downgraded"
        out(f"  {verb} {rev} in {res['seconds']:.2f} s"
            + (f" (after {attempts} attempts)" if attempts > 1 else "")
            + (" (already done)" if res.get("skipped") else ""))


def step_failure(exc: AgentError, *, action: str, before: list[str], backup: str | None,
                 retries: int, fix_hint: str) -> OpsError:
    d = exc.agent_details
    after = d.get("after", before)
    rev = d.get("revision", "?")
    details: list[str] = []
    if exc.kind == "lock_timeout":
        details.append(f"gave up after {retries + 1} attempts; the sessions holding locks:")
        for b in d.get("blockers") or []:
            details.append(f"  pid {b['pid']} {b['application_name']!r} user {b['user']} "
                           f"{b['state']} since {b['xact_start']} ({b['xact_seconds']} s): "
                           f"{b['locks']}; last query: {b['query']}")
        if not d.get("blockers"):
            details.append("  (none left now: it may have just finished; re-run)")
    if d.get("transactional") is False:
        details.append(f"{rev} uses autocommit_block(): it ran partly OUTSIDE a transaction, so "
                       f"statements before the failure may have committed")
    elif "transactional" in d:
        details.append(f"{rev} ran in a transaction: its changes were rolled back")
    if d.get("dropped_invalid_indexes"):
        details.append(f"dropped the INVALID index(es) the failed attempt left: "
                       f"{', '.join(d['dropped_invalid_indexes'])}")
    if d.get("invalid_indexes"):
        details.append(f"INVALID indexes in the database now: {', '.join(d['invalid_indexes'])}")
    if backup:
        details.append(f"{action} backup: {backup}")
    state = f"before {action}: {label(before)}; now: {label(after)}"
    if exc.kind == "lock_timeout":
        nxt = (f"end or wait for the blocking session(s) above (SELECT pg_terminate_backend(pid) "
               f"only if you own them), then re-run: invoke {action}")
    elif d.get("transactional") is False:
        nxt = f"invoke doctor   (see what {rev} left behind), then {fix_hint}"
    else:
        nxt = fix_hint
    return OpsError(exc.message, state=state, next_command=nxt, details=details)


# --- migrate ---------------------------------------------------------------------------
def migrate(settings: Settings, to: str = "head", *, sql: bool = False, backup: bool = True,
            out: Out = _print) -> dict:
    t0 = time.monotonic()
    retry_wait(settings)
    with Agent(settings) as agent:
        try:
            pre = agent.call("migrate.preflight", to=to)
        except AgentError as exc:
            raise refusal(exc) from None
        current, pending, target = pre["current"], pre["pending"], pre["target"]
        out(f"database {pre['database']} (PostgreSQL {pre['server_version']}): at {label(current)}; "
            f"target {target}")
        if not pending:
            out(f"nothing to do: already at {label(current)}")
            try:
                res = _verify(agent, [target], target in pre["heads"])
            except AgentError as exc:
                raise _verify_failure(exc, current, None) from None
            return {"before": current, "after": res["current"], "applied": [], "backup": None,
                    "target": target, "models_checked": res["models_checked"]}
        out(f"{len(pending)} pending, in order:")
        for p in pending:
            out(f"  {p['revision']}  {p['message']}"
                + ("" if p["transactional"] else "   (autocommit_block: not in a transaction)"))
        if sql:
            text = agent.call("migrate.sql", start=current, to=target)["sql"]
            return {"before": current, "after": current, "applied": [], "sql": text,
                    "backup": None, "target": target}

        acquire_lock(agent, "migrate", current, "migrate")
        # Re-read under the lock: another migrate may have finished just before we got it.
        pre = agent.call("migrate.preflight", to=target)
        current, pending = pre["current"], pre["pending"]
        if not pending:
            out(f"nothing to do: another run brought the database to {label(current)}")
            return {"before": current, "after": current, "applied": [], "backup": None,
                    "target": target}
        hashes = {p["revision"]: p["sha256"] for p in pending}
        backup_path = None
        if backup:
            backup_path = take_backup(settings, agent, "pre-migrate", out, current, "migrate")
        else:
            out("backup: skipped (--no-backup)"
                + ("  WARNING: ENVIRONMENT=production: there is no pre-migrate backup"
                   if settings.is_production else ""))
        done: list[dict] = []
        record = {"from": current, "requested": to, "to_target": target, "backup": backup_path,
                  "planned_revision_hashes": hashes, "lock_timeout": settings.lock_timeout,
                  "statement_timeout": settings.statement_timeout}
        out(f"upgrading (lock_timeout {settings.lock_timeout}, statement_timeout "
            f"{settings.statement_timeout}, up to {settings.lock_retries} retries per revision):")
        try:
            run_steps(settings, agent, [p["revision"] for p in pending], "up", out, done)
            res = _verify(agent, [target], target in pre["heads"])
        except AgentError as exc:
            after = exc.agent_details.get("after", exc.agent_details.get("current"))
            applied = [d["revision"] for d in done if not d.get("skipped")]
            err = step_failure(exc, action="migrate", before=current, backup=backup_path,
                               retries=settings.lock_retries,
                               fix_hint=_fix_hint(exc, current, applied, backup_path)) \
                if exc.kind not in ("verify", "schema_diff") else _verify_failure(exc, current, backup_path)
            audit.append(settings, "migrate", **record, to=after, result="failed",
                         error=exc.message, error_kind=exc.kind, state=err.state,
                         steps=done, duration_s=round(time.monotonic() - t0, 3),
                         revision_hashes={r: hashes[r] for r in applied},
                         revision_hashes_applied={r: hashes[r] for r in applied})
            raise err from None
        except OpsError as exc:  # the agent died (killed, OOM, container stopped) mid-run
            applied = [d["revision"] for d in done if not d.get("skipped")]
            audit.append(settings, "migrate", **record, to=None, result="failed",
                         error=exc.message, error_kind="agent_died", steps=done,
                         duration_s=round(time.monotonic() - t0, 3),
                         revision_hashes={r: hashes[r] for r in applied},
                         revision_hashes_applied={r: hashes[r] for r in applied})
            raise agent_died("migrate", exc, current, applied, backup_path) from None
        except KeyboardInterrupt:
            applied = [d["revision"] for d in done if not d.get("skipped")]
            audit.append(settings, "migrate", **record, to=None, result="interrupted",
                         steps=done, duration_s=round(time.monotonic() - t0, 3),
                         revision_hashes={r: hashes[r] for r in applied},
                         revision_hashes_applied={r: hashes[r] for r in applied})
            raise interrupted("migrate", current, applied, backup_path) from None
        applied = [d["revision"] for d in done if not d.get("skipped")]
        audit.append(settings, "migrate", **record, to=res["current"], result="ok", steps=done,
                     duration_s=round(time.monotonic() - t0, 3),
                     revision_hashes={r: hashes[r] for r in applied},
                     revision_hashes_applied={r: hashes[r] for r in applied})
    return {"before": current, "after": res["current"], "applied": applied, "backup": backup_path,
            "target": target, "models_checked": res["models_checked"],
            "seconds": round(time.monotonic() - t0, 2)}


def _cut_short(before: list[str], done: list[str], how: str = "") -> str:
    """The state after a run that ended mid-way: what it completed, and the step in progress."""
    return (f"before: {label(before)}; completed by this run: {', '.join(done) or 'nothing'}; "
            f"the step in progress was rolled back{' ' + how if how else ''}, unless it used "
            f"autocommit_block()")


def agent_died(action: str, exc: OpsError, before: list[str], done: list[str],
               backup: str | None) -> OpsError:
    return OpsError(f"{action} stopped: {exc.message}",
                    state=_cut_short(before, done, "by PostgreSQL when its connection ended"),
                    details=[f"{action} backup: {backup}"] if backup else [],
                    next_command="invoke current   (then invoke doctor)")


def interrupted(action: str, before: list[str], done: list[str], backup: str | None) -> OpsError:
    """Ctrl-C mid-run: the agent died with the terminal's signal; the revision that was running
    was rolled back if it ran in a transaction. Say what is known and how to find out the rest."""
    return OpsError(f"{action} interrupted", exit_code=130,
                    state=_cut_short(before, done),
                    details=[f"{action} backup: {backup}"] if backup else [],
                    next_command="invoke current   (then invoke doctor if a revision used autocommit_block)")


def _fix_hint(exc: AgentError, before: list[str], applied: list[str], backup: str | None) -> str:
    rev = exc.agent_details.get("revision", "?")
    hint = f"fix revision {rev}, then re-run: invoke migrate"
    if applied:
        hint += f"   (or undo what this run applied: invoke rollback --to={before[0] if before else 'base'})"
    return hint


def _verify(agent: Agent, targets: list[str], models: bool) -> dict:
    return agent.call("migrate.verify", targets=targets, models=models)


def _verify_failure(exc: AgentError, before: list[str], backup: str | None) -> OpsError:
    d = exc.agent_details
    details = []
    if d.get("diff"):
        details.append("differences between the live schema and the models (autogenerate):")
        details += [f"  {x}" for x in d["diff"]]
    if backup:
        details.append(f"pre-migrate backup: {backup}")
    undo = f"invoke rollback --to={before[0]}" if before else "invoke rollback --to=base"
    return OpsError(exc.message, state=f"before: {label(before)}; now: {label(d.get('current', []))}",
                    details=details,
                    next_command=f"add a revision for the difference (alembic revision --autogenerate) "
                                 f"or fix the models; to undo this run: {undo}")
