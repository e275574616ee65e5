"""invoke migrate: preflight, (offline SQL), backup, lock, upgrade one revision at a time
with lock_timeout and bounded retries, verify revision and models, audit.

Everything DB-side runs in ONE agent process; the pre-migrate backup runs between two
requests while that agent holds the lock.
"""

from __future__ import annotations

import shlex
import time

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError, command
from dbops.ops import batch, steps
from dbops.ops.output import Out, print_line, print_note
from dbops.ops.settle import settle
from dbops.ops.status import label


def migrate(
    settings: Settings,
    to: str = "head",
    *,
    sql: bool = False,
    backup: bool = True,
    out: Out = print_line,
    accept_risk: str | None = None,
    warn: Out = print_note,
) -> dict:
    t0 = time.monotonic()
    with Agent(settings) as agent:
        pre = steps.planned(agent, "migrate.preflight", to=to)
        current, pending, target = pre["current"], pre["pending"], pre["target"]
        out(
            f"database {pre['database']} (PostgreSQL {pre['server_version']}): "
            f"at {label(current)}; target {target}"
        )
        if not pending:
            out(f"nothing to do: already at {label(current)}")
            return _nothing_pending(agent, pre, sql)
        _show_pending(pending, out)
        if sql:
            text = agent.call("migrate.sql", start=current, to=target)["sql"]
            return _unchanged(current, target, sql=text)

        from dbops.ops.rehearse import gate  # the newest matching rehearsal; production limits

        gate(settings, current, pending, out, accept_risk)
        if backup:  # a read-only, full or unsafe backup folder: refused before the lock
            steps.backup_folder_ready(settings, current, "migrate")
        steps.acquire_lock(agent, "migrate", current, "migrate")
        settle(settings, agent, out, "migrate")  # a run that died applying: its outcome
        # Re-read under the lock: another migrate may have finished just before we got it.
        pre = agent.call("migrate.preflight", to=target, load_env=False)  # loaded above
        current, pending = pre["current"], pre["pending"]
        if not pending:
            out(f"nothing to do: another run brought the database to {label(current)}")
            return _unchanged(current, target)
        if backup:
            backup_path = _backup(settings, agent, out, warn, current, target)
        else:
            backup_path = _no_backup(settings, out)
        run = _run(settings, agent, to, pre, backup_path, t0)
        res = _upgrade(settings, agent, run, pre, out)
    return {
        "before": current,
        "after": res["current"],
        "applied": run.completed(),
        "backup": backup_path,
        "target": target,
        "models_checked": res["models_checked"],
        "seconds": round(time.monotonic() - t0, 2),
    }


def _unchanged(current: list[str], target: str, **extra) -> dict:
    """The result of a migrate that changed nothing."""
    return {
        "before": current,
        "after": current,
        "applied": [],
        "backup": None,
        "target": target,
        **extra,
    }


def _nothing_pending(agent: Agent, pre: dict, sql: bool) -> dict:
    """Already at the target: its revision and the models verified (--sql: nothing checked,
    there is no SQL to print)."""
    current, target = pre["current"], pre["target"]
    if sql:
        return _unchanged(current, target, sql="")
    try:
        res = _verify(agent, [target], target in pre["heads"])
    except AgentError as exc:
        raise _verify_failure(exc, current, None, applied=False) from None
    return {
        **_unchanged(current, target),
        "after": res["current"],
        "models_checked": res["models_checked"],
    }


def _show_pending(pending: list[dict], out: Out) -> None:
    out(f"{len(pending)} pending, in order:")
    for p in pending:
        out(
            f"  {p['revision']}  {p['message']}"
            + ("" if p["transactional"] else "   (autocommit_block: not in a transaction)")
        )


def _backup(
    settings: Settings, agent: Agent, out: Out, warn: Out, current: list[str], target: str
) -> str | None:
    """The pre-migrate backup, as DBOPS_PREMIGRATE_BACKUP says: auto|full|touched|none
    (dbops/ops/touched.py)."""
    from dbops.ops.touched import premigrate_backup

    return premigrate_backup(
        settings,
        agent,
        out,
        current,
        target,
        lambda: steps.backup_before(settings, agent, "pre-migrate", out, current, "migrate"),
        warn,
    )


def _no_backup(settings: Settings, out: Out) -> None:
    """--no-backup: said (warned about in production); no backup path."""
    out(
        "backup: skipped (--no-backup)"
        + (
            "  WARNING: ENVIRONMENT=production: there is no pre-migrate backup"
            if settings.is_production
            else ""
        )
    )


def _run(
    settings: Settings, agent: Agent, to: str, pre: dict, backup_path: str | None, t0: float
) -> steps.Run:
    """The run's audit record as known before its first step (read under the lock)."""
    current, target = pre["current"], pre["target"]
    hashes = {p["revision"]: p["sha256"] for p in pre["pending"]}
    return steps.Run(
        settings,
        "migrate",
        current,
        backup_path,
        record={
            "from": current,
            "requested": to,
            "to_target": target,
            "backup": backup_path,
            "planned_revision_hashes": hashes,
            "lock_timeout": settings.lock_timeout,
            "statement_timeout": settings.statement_timeout,
            **steps.wal_position(agent),
        },
        hashes=hashes,
        started=t0,
        hash_keys=("revision_hashes", "revision_hashes_applied"),
        agent=agent,
    )


def _upgrade(settings: Settings, agent: Agent, run: steps.Run, pre: dict, out: Out) -> dict:
    """The pending revisions applied and verified, audited (steps.audited); the agent's
    verify answer."""
    target = pre["target"]
    out(
        f"upgrading (lock_timeout {settings.lock_timeout}, statement_timeout "
        f"{settings.statement_timeout}, up to {settings.lock_retries} retries per revision):"
    )

    def upgrade() -> dict:
        revisions = [p["revision"] for p in pre["pending"]]
        batch.upgrade_all(settings, agent, revisions, target, out, run.done, applying=run.applying)
        return _verify(agent, [target], target in pre["heads"])

    return steps.audited(run, upgrade, lambda exc: _failure(settings, run, exc))


def _failure(settings: Settings, run: steps.Run, exc: AgentError) -> OpsError:
    """What a refused step or verification says (the database's state, the next command)."""
    step_verify = exc.kind == "verify" and "revision" in exc.agent_details
    if exc.kind in ("verify", "schema_diff") and not step_verify:
        return _verify_failure(exc, run.before, run.backup, applied=bool(run.completed()))
    return steps.step_failure(
        exc,
        action="migrate",
        before=run.before,
        backup=run.backup,
        retries=settings.lock_retries,
        fix_hint=_fix_hint(exc, run.before, run.completed()),
    )


def _fix_hint(exc: AgentError, before: list[str], applied: list[str]) -> str:
    rev = exc.agent_details.get("revision", "?")
    hint = f"fix revision {rev}, then re-run: invoke migrate"
    if exc.kind == "verify":  # the version row dbops reads did not move
        hint = (
            "make env.py connect to the database dbops points it at (DATABASE_URL / POSTGRES_* "
            "in its environment), then: invoke current"
        )
    if applied:
        undo = before[0] if before else "base"
        hint += f"   (or undo what this run applied: invoke rollback --to={undo})"
    return hint


def _verify(agent: Agent, targets: list[str], models: bool) -> dict:
    return agent.call("migrate.verify", targets=targets, models=models)


def _verify_failure(
    exc: AgentError, before: list[str], backup: str | None, *, applied: bool = True
) -> OpsError:
    """The database is where it should be but its schema is not what the models say. The way
    out depends on which side has the object: the models only (a revision is missing:
    autogenerate writes it), the database only (declare it in the models, or list it in
    DBOPS_MODELS_IGNORE when it is there on purpose — autogenerate would drop it). Undo advice
    only when this run applied something."""
    d = exc.agent_details
    diff = d.get("diff") or []
    only_db = [x for x in diff if x.startswith("remove_")]
    other = [x for x in diff if not x.startswith("remove_")]
    details = []
    if other:
        details.append("in the models, not in the database (autogenerate):")
        details += [f"  {x}" for x in other]
    if only_db:
        details.append("only in the database, not in the models:")
        details += [f"  {x}" for x in only_db]
    if backup:
        details.append(f"pre-migrate backup: {backup}")
    return OpsError(
        exc.message,
        state=f"before: {label(before)}; now: {label(d.get('current', []))}",
        details=details,
        next_command=_next_for_models(other, only_db, before, applied),
    )


def _next_for_models(other: list[str], only_db: list[str], before: list[str], applied: bool) -> str:
    """The next command for a models mismatch, runnable as printed (the ways out after #)."""
    undo = ""
    if applied:
        undo = "; to undo this run: " + command(
            "invoke", "rollback", f"--to={before[0] if before else 'base'}"
        )
    if other:
        return command(
            "alembic",
            "revision",
            "--autogenerate",
            "-m",
            "match the models",
            why="add a revision for what the models have, then review it" + undo,
        )
    if only_db:
        names = ",".join(_ignore_entry(x) for x in only_db)
        return (
            f"echo {shlex.quote('DBOPS_MODELS_IGNORE=' + names)} >> .env   # if it is in the "
            f"database on purpose; else declare what only the database has in the models{undo}"
        )
    return "invoke current   # then fix the models" + undo


def _ignore_entry(diff: str) -> str:
    """'remove_index ix_raw' -> 'index:ix_raw' (the DBOPS_MODELS_IGNORE syntax)."""
    kind, _, name = diff.partition(" ")
    return f"{kind.removeprefix('remove_')}:{name.split(' ')[0]}"
