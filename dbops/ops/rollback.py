"""invoke rollback --to=REV: plan (refusing bad targets before anything is touched),
confirmation, backup, lock, downgrade one revision at a time, verify, audit."""

from __future__ import annotations

import time

from dbops import audit
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.ops.migrate import (
    Out,
    _print,
    acquire_lock,
    agent_died,
    interrupted,
    refusal,
    retry_wait,
    run_steps,
    step_failure,
    take_backup,
)
from dbops.ops.status import label


def describe_step(step: dict) -> str:
    head = f"  {step['revision']}  {step['message']}"
    if step["body"] == "not_implemented":
        return head + "\n      downgrade NOT IMPLEMENTED: cannot be rolled back this way"
    if step["body"] == "empty":
        return head + "\n      empty downgrade: only the version row changes (schema stays)"
    if step["data_loss"]:
        return head + "\n      DATA LOSS: " + "; ".join(step["data_loss"])
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
            if b.get("verified") and sorted(b.get("revisions") or []) == want:
                found.append(b)
    except OpsError:
        return []
    return found


def rollback(settings: Settings, to: str, *, yes: bool = False, accept_data_loss: bool = False,
             backup: bool = True, out: Out = _print) -> dict:
    t0 = time.monotonic()
    retry_wait(settings)
    with Agent(settings) as agent:
        try:
            plan = agent.call("plan.downgrade", to=to)
        except AgentError as exc:
            raise refusal(exc, action=f"rollback --to={to}" if exc.kind != "bad_target" else "rollback") from None
        current, target, steps = plan["current"], plan["target"], plan["steps"]
        tlabel = target or "base"
        if not steps:
            out(f"nothing to do: the database is already at {tlabel}")
            return {"before": current, "after": current, "downgraded": [], "backup": None,
                    "target": target}
        out(f"rollback plan: {label(current)} -> {tlabel}, {len(steps)} revision(s) to downgrade, newest first:")
        for s in steps:
            out(describe_step(s))
        at_target = backups_at(settings, target)
        if at_target:
            b = at_target[0]
            out(f"a verified backup taken at {tlabel} exists: {b['path']} ({b.get('created_at', '?')}, "
                f"reason {b.get('reason', '?')}); restoring it instead brings back the schema AND "
                f"the data of that moment (later writes are lost): invoke restore --file={b['path']}")
        if plan["not_implemented"]:
            raise OpsError(f"cannot roll back to {tlabel}: the downgrade of "
                           f"{', '.join(plan['not_implemented'])} is not implemented",
                           state=f"unchanged at {label(current)}",
                           next_command=(f"invoke restore --file={at_target[0]['path']}" if at_target else
                                         "restore a backup taken at that revision (invoke backups), "
                                         "or write the downgrade"))
        if plan["data_loss"]:
            confirm(settings, f"This plan DROPS DATA ({sum(len(s['data_loss']) for s in steps)} "
                              f"item(s) above).", yes=accept_data_loss, expect="drop data",
                    flag="--accept-data-loss",
                    state=f"unchanged at {label(current)}",
                    next_command=f"invoke rollback --to={to} --accept-data-loss   "
                                 f"(a pre-rollback backup is taken first)")
        else:
            confirm(settings, f"Roll back {label(current)} -> {tlabel}?", yes=yes,
                    state=f"unchanged at {label(current)}", next_command=f"invoke rollback --to={to} --yes")

        acquire_lock(agent, "rollback", current, f"rollback --to={to}")
        again = agent.call("plan.downgrade", to=target or "base")
        if again["current"] != current:
            raise OpsError(f"the database moved from {label(current)} to {label(again['current'])} "
                           f"while this plan was shown", state=f"at {label(again['current'])}",
                           next_command=f"invoke rollback --to={to}   (review the new plan)")
        hashes = {s["revision"]: s["sha256"] for s in steps}
        backup_path = None
        if backup:
            backup_path = take_backup(settings, agent, "pre-rollback", out, current,
                                      f"rollback --to={to}")
            out(f"pre-rollback backup: {backup_path}  (to undo this rollback: invoke restore --file={backup_path})")
        else:
            out("backup: skipped (--no-backup)")
        record = {"from": current, "requested": to, "to_target": target, "backup": backup_path,
                  "planned_revision_hashes": hashes, "data_loss": [x for s in steps for x in s["data_loss"]],
                  "accepted_data_loss": bool(plan["data_loss"]),
                  "lock_timeout": settings.lock_timeout}
        done: list[dict] = []
        out(f"downgrading (lock_timeout {settings.lock_timeout}, up to {settings.lock_retries} retries per revision):")
        try:
            run_steps(settings, agent, [s["revision"] for s in steps], "down", out, done)
            res = agent.call("migrate.verify", targets=[target] if target else [], models=False)
        except AgentError as exc:
            after = exc.agent_details.get("after", exc.agent_details.get("current"))
            err = step_failure(exc, action="rollback", before=current, backup=backup_path,
                               retries=settings.lock_retries,
                               fix_hint=(f"fix the downgrade of {exc.agent_details.get('revision', '?')}, "
                                         f"then re-run: invoke rollback --to={to}"
                                         + (f"   (or restore: invoke restore --file={backup_path})" if backup_path else "")))
            audit.append(settings, "rollback", **record, to=after, result="failed", error=exc.message,
                         error_kind=exc.kind, state=err.state, steps=done,
                         revision_hashes={d["revision"]: hashes[d["revision"]] for d in done
                                          if not d.get("skipped")},
                         duration_s=round(time.monotonic() - t0, 3))
            raise err from None
        except OpsError as exc:  # the agent died mid-run
            downgraded = [d["revision"] for d in done if not d.get("skipped")]
            audit.append(settings, "rollback", **record, to=None, result="failed",
                         error=exc.message, error_kind="agent_died", steps=done,
                         revision_hashes={r: hashes[r] for r in downgraded},
                         duration_s=round(time.monotonic() - t0, 3))
            raise agent_died("rollback", exc, current, downgraded, backup_path) from None
        except KeyboardInterrupt:
            downgraded = [d["revision"] for d in done if not d.get("skipped")]
            audit.append(settings, "rollback", **record, to=None, result="interrupted", steps=done,
                         revision_hashes={r: hashes[r] for r in downgraded},
                         duration_s=round(time.monotonic() - t0, 3))
            raise interrupted("rollback", current, downgraded, backup_path) from None
        audit.append(settings, "rollback", **record, to=res["current"], result="ok", steps=done,
                     revision_hashes={d["revision"]: hashes[d["revision"]] for d in done
                                      if not d.get("skipped")},
                     duration_s=round(time.monotonic() - t0, 3))
    return {"before": current, "after": res["current"], "backup": backup_path, "target": target,
            "downgraded": [d["revision"] for d in done if not d.get("skipped")],
            "seconds": round(time.monotonic() - t0, 2)}
