"""invoke rollback --to=REV: plan (refusing bad targets before anything is touched),
confirmation, backup, lock, downgrade one revision at a time, verify, audit; then the
put-back. The plan and its checks: dbops/ops/rollback_plan.py."""

from __future__ import annotations

import time

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.output import Out, print_line, print_note
from dbops.ops.restore import restore_command
from dbops.ops.rollback_plan import (
    Plan,
    confirmed,
    plan_putback,
    read_plan,
    recheck,
    refuse_not_implemented,
    show,
)
from dbops.ops.settle import settle
from dbops.ops.steps import (
    Run,
    acquire_lock,
    audited,
    backup_before,
    run_steps,
    step_failure,
    wal_position,
)


def rollback(
    settings: Settings,
    to: str,
    *,
    yes: bool = False,
    accept_data_loss: bool = False,
    backup: bool = True,
    putback: bool = True,
    out: Out = print_line,
    warn: Out = print_note,
) -> dict:
    t0 = time.monotonic()
    with Agent(settings) as agent:
        plan = read_plan(settings, agent, to, warn)
        if not plan.steps:
            out(f"nothing to do: the database is already at {plan.tlabel}")
            return {
                "before": plan.current,
                "after": plan.current,
                "downgraded": [],
                "backup": None,
                "target": plan.target,
            }
        show(settings, plan, out)
        plan_putback(settings, agent, plan, putback, out)
        refuse_not_implemented(plan)
        confirmed(settings, plan, yes, accept_data_loss)
        acquire_lock(agent, "rollback", plan.current, plan.action)
        settle(settings, agent, out, "rollback")  # a run that died applying: its outcome
        recheck(agent, plan, accept_data_loss)
        backup_path = _backup(settings, agent, plan, out) if backup else _no_backup(out)
        run = _run(settings, agent, plan, backup_path, t0)
        res = _downgrade(settings, agent, plan, run, out)
        if plan.doable:  # its own audit record ("putback"); the downgrade's is written above
            from dbops.ops import putback as putback_op

            putback_op.run(settings, agent, plan.entry, plan.doable, out, plan.tlabel)
    return {
        "before": plan.current,
        "after": res["current"],
        "backup": backup_path,
        "target": plan.target,
        "downgraded": run.completed(),
        "seconds": round(time.monotonic() - t0, 2),
    }


def _backup(settings: Settings, agent: Agent, plan: Plan, out: Out) -> str:
    path = backup_before(settings, agent, "pre-rollback", out, plan.current, plan.action)
    out(f"pre-rollback backup: {path}  (to undo this rollback: {restore_command(path)})")
    return path


def _no_backup(out: Out) -> None:
    out("backup: skipped (--no-backup)")


def _run(settings: Settings, agent: Agent, plan: Plan, backup_path: str | None, t0: float) -> Run:
    """The run's audit record as known before its first step (checked under the lock)."""
    hashes = {s["revision"]: s["sha256"] for s in plan.steps}
    return Run(
        settings,
        "rollback",
        plan.current,
        backup_path,
        record={
            "from": plan.current,
            "requested": plan.to,
            "to_target": plan.target,
            "backup": backup_path,
            "planned_revision_hashes": hashes,
            "data_loss": [x for s in plan.steps for x in s["data_loss"]],
            "accepted_data_loss": bool(plan.data_loss),
            "putback_from": plan.entry["path"] if plan.entry else None,
            "lock_timeout": settings.lock_timeout,
            **wal_position(agent),
        },
        hashes=hashes,
        started=t0,
        agent=agent,
    )


def _downgrade(settings: Settings, agent: Agent, plan: Plan, run: Run, out: Out) -> dict:
    """The planned downgrades, newest first, and the version rows verified, audited
    (steps.audited); the agent's verify answer."""
    out(
        f"downgrading (lock_timeout {settings.lock_timeout}, up to {settings.lock_retries} "
        f"retries per revision):"
    )
    revisions = [s["revision"] for s in plan.steps]
    targets = [plan.target] if plan.target else []

    def downgrade() -> dict:
        run_steps(settings, agent, revisions, "down", out, run.done, applying=run.applying)
        return agent.call("migrate.verify", targets=targets, models=False)

    def failure(exc: AgentError) -> OpsError:
        rev = exc.agent_details.get("revision", "?")
        undo = f"   (or restore: {restore_command(run.backup)})" if run.backup else ""
        return step_failure(
            exc,
            action="rollback",
            before=plan.current,
            backup=run.backup,
            retries=settings.lock_retries,
            fix_hint=f"fix the downgrade of {rev}, then re-run: "
            f"invoke rollback --to={plan.to}{undo}",
        )

    return audited(run, downgrade, failure)
