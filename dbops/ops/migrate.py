"""invoke migrate: preflight, (offline SQL), backup, lock, upgrade one revision at a time
with lock_timeout and bounded retries, verify revision and models, audit.

Everything DB-side runs in ONE agent process; the pre-migrate backup runs between two
requests while that agent holds the lock.
"""

from __future__ import annotations

import time

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops import steps
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
            try:
                res = _verify(agent, [target], target in pre["heads"])
            except AgentError as exc:
                raise _verify_failure(exc, current, None) from None
            return {
                "before": current,
                "after": res["current"],
                "applied": [],
                "backup": None,
                "target": target,
                "models_checked": res["models_checked"],
            }
        out(f"{len(pending)} pending, in order:")
        for p in pending:
            out(
                f"  {p['revision']}  {p['message']}"
                + ("" if p["transactional"] else "   (autocommit_block: not in a transaction)")
            )
        if sql:
            text = agent.call("migrate.sql", start=current, to=target)["sql"]
            return {
                "before": current,
                "after": current,
                "applied": [],
                "sql": text,
                "backup": None,
                "target": target,
            }

        from dbops.ops.rehearse import gate  # the newest matching rehearsal; production limits

        gate(settings, current, pending, out, accept_risk)
        if backup:  # a read-only, full or unsafe backup folder: refused before the lock
            steps.backup_folder_ready(settings, current, "migrate")
        steps.acquire_lock(agent, "migrate", current, "migrate")
        settle(settings, agent, out, "migrate")  # a run that died applying: its outcome
        # Re-read under the lock: another migrate may have finished just before we got it.
        pre = agent.call("migrate.preflight", to=target)
        current, pending = pre["current"], pre["pending"]
        if not pending:
            out(f"nothing to do: another run brought the database to {label(current)}")
            return {
                "before": current,
                "after": current,
                "applied": [],
                "backup": None,
                "target": target,
            }
        backup_path = None
        if backup:  # DBOPS_PREMIGRATE_BACKUP: auto|full|touched|none (dbops/ops/touched.py)
            from dbops.ops.touched import premigrate_backup

            backup_path = premigrate_backup(
                settings,
                agent,
                out,
                current,
                target,
                lambda: steps.backup_before(
                    settings, agent, "pre-migrate", out, current, "migrate"
                ),
                warn,
            )
        else:
            out(
                "backup: skipped (--no-backup)"
                + (
                    "  WARNING: ENVIRONMENT=production: there is no pre-migrate backup"
                    if settings.is_production
                    else ""
                )
            )
        hashes = {p["revision"]: p["sha256"] for p in pending}
        run = steps.Run(
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
        out(
            f"upgrading (lock_timeout {settings.lock_timeout}, statement_timeout "
            f"{settings.statement_timeout}, up to {settings.lock_retries} retries per revision):"
        )

        def upgrade() -> dict:
            steps.run_steps(
                settings,
                agent,
                [p["revision"] for p in pending],
                "up",
                out,
                run.done,
                applying=run.applying,
            )
            return _verify(agent, [target], target in pre["heads"])

        def failure(exc: AgentError) -> OpsError:
            if exc.kind in ("verify", "schema_diff"):
                return _verify_failure(exc, current, backup_path)
            return steps.step_failure(
                exc,
                action="migrate",
                before=current,
                backup=backup_path,
                retries=settings.lock_retries,
                fix_hint=_fix_hint(exc, current, run.completed()),
            )

        res = steps.audited(run, upgrade, failure)
        applied = run.completed()
    return {
        "before": current,
        "after": res["current"],
        "applied": applied,
        "backup": backup_path,
        "target": target,
        "models_checked": res["models_checked"],
        "seconds": round(time.monotonic() - t0, 2),
    }


def _fix_hint(exc: AgentError, before: list[str], applied: list[str]) -> str:
    rev = exc.agent_details.get("revision", "?")
    hint = f"fix revision {rev}, then re-run: invoke migrate"
    if applied:
        undo = before[0] if before else "base"
        hint += f"   (or undo what this run applied: invoke rollback --to={undo})"
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
    return OpsError(
        exc.message,
        state=f"before: {label(before)}; now: {label(d.get('current', []))}",
        details=details,
        next_command=f"alembic revision --autogenerate -m 'match the models'   # add a "
        f"revision for the difference, or fix the models; to undo this run: {undo}",
    )
