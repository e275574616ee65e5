"""invoke rollback --to=REV: plan (refusing bad targets before anything is touched),
confirmation, backup, lock, downgrade one revision at a time, verify, audit."""

from __future__ import annotations

import time
from pathlib import Path

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.ops.output import Out, print_line, print_note
from dbops.ops.restore import check_pg_restore, restore_command
from dbops.ops.settle import settle
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


def _note_empty(settings: Settings, steps, target, empty: list[str], out: Out) -> None:
    """Data an upgrade changed under an empty downgrade stays as it is (dbops cannot tell the
    migration's changes from later writes); say where the rows of before are."""
    from dbops.ops import putback as putback_op

    found = putback_op.migrate_backup(settings, steps, target, verify=False)
    if "entry" not in found:
        return
    path, manifest = found["entry"]["path"], found["entry"]["manifest"]
    how = (
        f"{restore_command(path, '--yes')} after this rollback replaces the rows of "
        f"{', '.join(sorted(manifest['tables']))} with the backup's"
        if manifest.get("partial")
        else f"the backup {path} holds the rows of before the migration"
    )
    out(
        f"note: {', '.join(empty)} downgrade(s) are empty: data their upgrade changed is NOT "
        f"put back (it cannot be told from later writes); {how}"
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
        from dbops.ops import downgrade_loss
        from dbops.ops import putback as putback_op

        if plan["not_implemented"]:
            loss = {"steps": [], "putback": {}, "error": "a downgrade is not implemented"}
        else:
            loss = downgrade_loss.loss_set(settings, agent, current, target, warn)
        data_loss = downgrade_loss.apply(steps, loss)
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
        empty = [s["revision"] for s in steps if s["body"] == "empty"]
        if empty:
            _note_empty(settings, steps, target, empty, out)
        entry, doable = None, {}
        wanted = sorted(loss["putback"])
        if loss.get("error") and putback and not plan["not_implemented"]:
            out(
                f"put-back: not computed ({loss['error']}); nothing is put back after the "
                "downgrade (the migrate's backup still holds the data of before)"
            )
        if wanted and not putback:
            out(f"--no-putback: {', '.join(wanted)} keep what the downgrade leaves")
        elif wanted and not plan["not_implemented"]:
            found = putback_op.migrate_backup(settings, steps, target)
            if "refused" in found:
                raise OpsError(
                    f"the downgrade leaves {', '.join(wanted)} without the data the migration "
                    f"took, and it cannot be put back: {found['refused']}",
                    state=f"unchanged at {label(current)}",
                    next_command=f"invoke rollback --to={to} --no-putback"
                    + (" --accept-data-loss" if data_loss else "")
                    + "   # the downgrade alone: what the migration dropped stays lost",
                )
            entry = found["entry"]
            # its pg_restore must be able to read the archive: refused now, not after
            check_pg_restore(
                settings,
                agent.target,
                Path(entry["path"]),
                entry["manifest"],
                agent.call("restore.facts"),
            )
            doable, cannot = putback_op.split(loss["putback"], entry["manifest"], entry["path"])
            out(
                f"then: put back from {entry['path']} (the backup of the migrate that applied "
                f"{steps[-1]['revision']}, {found['record'].get('ts', '?')}), never replacing "
                "rows or values written since (--no-putback to skip):"
            )
            for line in putback_op.describe(doable) + cannot:
                out(line)
        if plan["not_implemented"]:
            raise OpsError(
                f"cannot roll back to {tlabel}: the downgrade of "
                f"{', '.join(plan['not_implemented'])} is not implemented",
                state=f"unchanged at {label(current)}",
                next_command=(
                    restore_command(at_target[0]["path"])
                    if at_target
                    else "invoke backups   # restore a backup taken at that revision, "
                    "or write the downgrade"
                ),
            )
        if data_loss:
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
        settle(settings, agent, out, "rollback")  # a run that died applying: its outcome
        again = agent.call("plan.downgrade", to=target or "base")
        if again["current"] != current:
            raise OpsError(
                f"the database moved from {label(current)} to {label(again['current'])} "
                f"while this plan was shown",
                state=f"at {label(again['current'])}",
                next_command=f"invoke rollback --to={to}   (review the new plan)",
            )
        recount = [dict(s) for s in steps]
        if downgrade_loss.apply(
            recount, {**loss, "steps": downgrade_loss.counted(agent, loss)}
        ) and not (data_loss or accept_data_loss):
            # counted again under the lock: rows arrived in a table the plan showed empty
            lost = [x for st in recount for x in st["data_loss"]]
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
                "accepted_data_loss": bool(data_loss),
                "putback_from": entry["path"] if entry else None,
                "lock_timeout": settings.lock_timeout,
                **wal_position(agent),
            },
            hashes=hashes,
            started=t0,
            agent=agent,
        )
        out(
            f"downgrading (lock_timeout {settings.lock_timeout}, up to {settings.lock_retries} "
            f"retries per revision):"
        )

        def downgrade() -> dict:
            run_steps(
                settings,
                agent,
                [s["revision"] for s in steps],
                "down",
                out,
                run.done,
                applying=run.applying,
            )
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
        if doable:  # its own audit record ("putback"); the downgrade's is written above
            putback_op.run(settings, agent, entry, doable, out, tlabel)
    return {
        "before": current,
        "after": res["current"],
        "backup": backup_path,
        "target": target,
        "downgraded": run.completed(),
        "seconds": round(time.monotonic() - t0, 2),
    }
