"""invoke rollback --to=REV: plan (refusing bad targets before anything is touched),
confirmation, backup, lock, downgrade one revision at a time, verify, audit."""

from __future__ import annotations

import time
from pathlib import Path

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.ops.output import Out, print_line
from dbops.ops.restore import check_pg_restore, restore_command
from dbops.ops.status import label
from dbops.ops.steps import (
    Run,
    acquire_lock,
    audited,
    backup_before,
    refusal,
    run_steps,
    step_failure,
    wal_position,
)


def describe_step(step: dict) -> str:
    head = f"  {step['revision']}  {step['message']}"
    if step["body"] == "not_implemented":
        return head + "\n      downgrade NOT IMPLEMENTED: cannot be rolled back this way"
    if step["body"] == "empty":
        return head + "\n      empty downgrade: only the version row changes (schema stays)"
    empty = step.get("drops_empty") or []
    if step["data_loss"]:
        return head + "\n      DATA LOSS: " + "; ".join(step["data_loss"] + empty)
    if empty:
        return head + "\n      no data loss: " + "; ".join(empty)
    return head + "\n      no data loss (drops no table or column)"


def backups_at(settings: Settings, revision: str | None) -> list[dict]:
    """Verified backups whose database was at ``revision`` (newest first)."""
    try:
        from dbops import catalog  # issue 3's module
    except ImportError:
        return []
    want = [revision] if revision else []
    found = []
    try:
        for b in catalog.list_backups(settings, database=settings.database, include_invalid=False):
            if (
                b.get("verified")
                and not b.get("partial")
                and sorted(b.get("revisions") or []) == want
            ):
                found.append(b)
    except OpsError:
        return []
    return found


def rollback(
    settings: Settings,
    to: str,
    *,
    yes: bool = False,
    accept_data_loss: bool = False,
    backup: bool = True,
    putback: bool = True,
    out: Out = print_line,
) -> dict:
    t0 = time.monotonic()
    with Agent(settings) as agent:
        try:
            plan = agent.call("plan.downgrade", to=to)
        except AgentError as exc:
            action = f"rollback --to={to}" if exc.kind != "bad_target" else "rollback"
            raise refusal(exc, action=action) from None
        current, target, steps = plan["current"], plan["target"], plan["steps"]
        tlabel = target or "base"
        if not steps:
            out(f"nothing to do: the database is already at {tlabel}")
            return {
                "before": current,
                "after": current,
                "downgraded": [],
                "backup": None,
                "target": target,
            }
        out(
            f"rollback plan: {label(current)} -> {tlabel}, {len(steps)} revision(s) to downgrade, "
            f"newest first:"
        )
        for s in steps:
            out(describe_step(s))
        at_target = backups_at(settings, target)
        if at_target:
            b = at_target[0]
            out(
                f"a verified backup taken at {tlabel} exists: {b['path']} "
                f"({b.get('created_at', '?')}, "
                f"reason {b.get('reason', '?')}); restoring it instead brings back the schema AND "
                f"the data of that moment (later writes are lost): {restore_command(b['path'])}"
            )
        from dbops.ops import touched

        touched_backup = touched.backup_for_rollback(settings, target, steps) if putback else None
        if touched_backup:  # its pg_restore must be able to put it back: refused now, not after
            check_pg_restore(
                settings,
                agent.target,
                Path(touched_backup["path"]),
                touched_backup.get("manifest") or {},
                agent.call("restore.facts"),
            )
            lost = touched.lossy(touched_backup)
            out(
                f"then: rows the migration lost are put back from {touched_backup['path']} (a "
                f"partial pre-migrate backup at {tlabel}); rows written to these tables since are "
                "replaced (--no-putback to skip):"
            )
            for name, why in sorted(lost.items()):
                out(f"  {name}: {why}")
        if plan["not_implemented"]:
            raise OpsError(
                f"cannot roll back to {tlabel}: the downgrade of "
                f"{', '.join(plan['not_implemented'])} is not implemented",
                state=f"unchanged at {label(current)}",
                next_command=(
                    restore_command(at_target[0]["path"])
                    if at_target
                    else "restore a backup taken at that revision "
                    "(invoke backups), or write the downgrade"
                ),
            )
        if plan["data_loss"]:
            confirm(
                settings,
                f"This plan DROPS DATA ({sum(len(s['data_loss']) for s in steps)} item(s) above).",
                yes=accept_data_loss,
                expect="drop data",
                flag="--accept-data-loss",
                state=f"unchanged at {label(current)}",
                next_command=f"invoke rollback --to={to} --accept-data-loss   "
                f"(a pre-rollback backup is taken first)",
            )
        else:
            # --accept-data-loss accepts more than --yes: a script passing it still proceeds
            # when the counts show that nothing would be lost
            confirm(
                settings,
                f"Roll back {label(current)} -> {tlabel}?",
                yes=yes or accept_data_loss,
                state=f"unchanged at {label(current)}",
                next_command=f"invoke rollback --to={to} --yes",
            )

        acquire_lock(agent, "rollback", current, f"rollback --to={to}")
        again = agent.call("plan.downgrade", to=target or "base")
        if again["current"] != current:
            raise OpsError(
                f"the database moved from {label(current)} to {label(again['current'])} "
                f"while this plan was shown",
                state=f"at {label(again['current'])}",
                next_command=f"invoke rollback --to={to}   (review the new plan)",
            )
        if again["data_loss"] and not plan["data_loss"] and not accept_data_loss:
            # counted again under the lock: rows arrived in a table the plan showed empty
            lost = [x for st in again["steps"] for x in st["data_loss"]]
            raise OpsError(
                f"the plan showed no data loss, but counted again under the lock: "
                f"{'; '.join(lost)}",
                state=f"unchanged at {label(current)}",
                next_command=f"invoke rollback --to={to} --accept-data-loss   "
                f"(a pre-rollback backup is taken first)",
            )
        hashes = {s["revision"]: s["sha256"] for s in steps}
        backup_path = None
        if backup:
            backup_path = backup_before(
                settings, agent, "pre-rollback", out, current, f"rollback --to={to}"
            )
            out(
                f"pre-rollback backup: {backup_path}  "
                f"(to undo this rollback: {restore_command(backup_path)})"
            )
        else:
            out("backup: skipped (--no-backup)")
        run = Run(
            settings,
            "rollback",
            current,
            backup_path,
            record={
                "from": current,
                "requested": to,
                "to_target": target,
                "backup": backup_path,
                "planned_revision_hashes": hashes,
                "data_loss": [x for s in steps for x in s["data_loss"]],
                "accepted_data_loss": bool(plan["data_loss"]),
                "lock_timeout": settings.lock_timeout,
                **wal_position(agent),
            },
            hashes=hashes,
            started=t0,
        )
        out(
            f"downgrading (lock_timeout {settings.lock_timeout}, up to {settings.lock_retries} "
            f"retries per revision):"
        )

        def downgrade() -> dict:
            run_steps(settings, agent, [s["revision"] for s in steps], "down", out, run.done)
            return agent.call("migrate.verify", targets=[target] if target else [], models=False)

        def failure(exc: AgentError) -> OpsError:
            rev = exc.agent_details.get("revision", "?")
            undo = f"   (or restore: {restore_command(backup_path)})" if backup_path else ""
            return step_failure(
                exc,
                action="rollback",
                before=current,
                backup=backup_path,
                retries=settings.lock_retries,
                fix_hint=f"fix the downgrade of {rev}, then re-run: "
                f"invoke rollback --to={to}{undo}",
            )

        res = audited(run, downgrade, failure)
        if touched_backup:  # its own audit record ("putback"); the downgrade's is written above
            touched.putback_after_rollback(settings, agent, touched_backup, out, tlabel)
    return {
        "before": current,
        "after": res["current"],
        "backup": backup_path,
        "target": target,
        "downgraded": run.completed(),
        "seconds": round(time.monotonic() - t0, 2),
    }
