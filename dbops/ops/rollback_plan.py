"""invoke rollback's plan, before anything is changed: the downgrades and what each loses,
a backup taken at the target, the put-back after the downgrade, the refusals and the
confirmation; and the plan checked again under the lock (dbops/ops/rollback.py runs it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.ops import downgrade_loss
from dbops.ops.output import Out
from dbops.ops.restore import check_pg_restore, restore_command
from dbops.ops.status import label
from dbops.ops.steps import refusal


@dataclass
class Plan:
    """What ``plan.downgrade`` answered for ``--to``, with its loss set (downgrade_loss) and,
    once :func:`plan_putback` ran, the backup to put back from and what it can give back."""

    to: str
    current: list[str]
    target: str | None
    steps: list[dict]
    not_implemented: list[str]
    loss: dict = field(default_factory=dict)
    data_loss: bool = False
    at_target: list[dict] = field(default_factory=list)
    entry: dict | None = None
    doable: dict = field(default_factory=dict)

    @property
    def tlabel(self) -> str:
        return self.target or "base"

    @property
    def action(self) -> str:
        return f"rollback --to={self.to}"

    @property
    def unchanged(self) -> str:
        return f"unchanged at {label(self.current)}"


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


def read_plan(settings: Settings, agent: Agent, to: str, warn: Out) -> Plan:
    """The agent's plan (a bad target refused: nothing was changed) and what it loses."""
    try:
        answer = agent.call("plan.downgrade", to=to)
    except AgentError as exc:
        action = f"rollback --to={to}" if exc.kind != "bad_target" else "rollback"
        raise refusal(exc, action=action) from None
    plan = Plan(to, answer["current"], answer["target"], answer["steps"], answer["not_implemented"])
    if not plan.steps:
        return plan
    if plan.not_implemented:
        plan.loss = {"steps": [], "putback": {}, "error": "a downgrade is not implemented"}
    else:
        plan.loss = downgrade_loss.loss_set(settings, agent, plan.current, plan.target, warn)
    plan.data_loss = downgrade_loss.apply(plan.steps, plan.loss)
    plan.at_target = backups_at(settings, plan.target)
    return plan


def show(settings: Settings, plan: Plan, out: Out) -> None:
    """The plan on screen: each downgrade and what it loses, a backup taken at the target."""
    out(
        f"rollback plan: {label(plan.current)} -> {plan.tlabel}, {len(plan.steps)} revision(s) "
        f"to downgrade, newest first:"
    )
    for s in plan.steps:
        out(describe_step(s))
    if plan.at_target:
        b = plan.at_target[0]
        out(
            f"a verified backup taken at {plan.tlabel} exists: {b['path']} "
            f"({b.get('created_at', '?')}, "
            f"reason {b.get('reason', '?')}); restoring it instead brings back the schema AND "
            f"the data of that moment (later writes are lost): {restore_command(b['path'])}"
        )
    empty = [s["revision"] for s in plan.steps if s["body"] == "empty"]
    if empty:
        _note_empty(settings, plan.steps, plan.target, empty, out)


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


def plan_putback(settings: Settings, agent: Agent, plan: Plan, putback: bool, out: Out) -> None:
    """What is put back after the downgrade, from the backup of the migrate that applied the
    revisions (``plan.entry``, ``plan.doable``); a backup that cannot serve is refused now."""
    wanted = sorted(plan.loss["putback"])
    if plan.loss.get("error") and putback and not plan.not_implemented:
        out(
            f"put-back: not computed ({plan.loss['error']}); nothing is put back after the "
            "downgrade (the migrate's backup still holds the data of before)"
        )
    if wanted and not putback:
        out(f"--no-putback: {', '.join(wanted)} keep what the downgrade leaves")
    elif wanted and not plan.not_implemented:
        _putback_from_backup(settings, agent, plan, wanted, out)


def _putback_from_backup(
    settings: Settings, agent: Agent, plan: Plan, wanted: list[str], out: Out
) -> None:
    from dbops.ops import putback as putback_op

    found = putback_op.migrate_backup(settings, plan.steps, plan.target)
    if "refused" in found:
        raise OpsError(
            f"the downgrade leaves {', '.join(wanted)} without the data the migration "
            f"took, and it cannot be put back: {found['refused']}",
            state=plan.unchanged,
            next_command=f"invoke rollback --to={plan.to} --no-putback"
            + (" --accept-data-loss" if plan.data_loss else "")
            + "   # the downgrade alone: what the migration dropped stays lost",
        )
    entry = plan.entry = found["entry"]
    # its pg_restore must be able to read the archive: refused now, not after
    check_pg_restore(
        settings,
        agent.target,
        Path(entry["path"]),
        entry["manifest"],
        agent.call("restore.facts"),
    )
    plan.doable, cannot = putback_op.split(plan.loss["putback"], entry["manifest"], entry["path"])
    out(
        f"then: put back from {entry['path']} (the backup of the migrate that applied "
        f"{plan.steps[-1]['revision']}, {found['record'].get('ts', '?')}), never replacing "
        "rows or values written since (--no-putback to skip):"
    )
    for line in putback_op.describe(plan.doable) + cannot:
        out(line)


def refuse_not_implemented(plan: Plan) -> None:
    """A downgrade that is not implemented: refused, with the backup at the target if any."""
    if not plan.not_implemented:
        return
    raise OpsError(
        f"cannot roll back to {plan.tlabel}: the downgrade of "
        f"{', '.join(plan.not_implemented)} is not implemented",
        state=plan.unchanged,
        next_command=(
            restore_command(plan.at_target[0]["path"])
            if plan.at_target
            else "invoke backups   # restore a backup taken at that revision, "
            "or write the downgrade"
        ),
    )


def confirmed(settings: Settings, plan: Plan, yes: bool, accept_data_loss: bool) -> None:
    """The operator's yes: "drop data" (--accept-data-loss) when the plan loses data."""
    if plan.data_loss:
        confirm(
            settings,
            f"This plan DROPS DATA ({sum(len(s['data_loss']) for s in plan.steps)} item(s) above).",
            yes=accept_data_loss,
            expect="drop data",
            flag="--accept-data-loss",
            state=plan.unchanged,
            next_command=f"invoke rollback --to={plan.to} --accept-data-loss   "
            f"(a pre-rollback backup is taken first)",
        )
    else:
        # --accept-data-loss accepts more than --yes: a script passing it still proceeds
        # when the counts show that nothing would be lost
        confirm(
            settings,
            f"Roll back {label(plan.current)} -> {plan.tlabel}?",
            yes=yes or accept_data_loss,
            state=plan.unchanged,
            next_command=f"invoke rollback --to={plan.to} --yes",
        )


def recheck(agent: Agent, plan: Plan, accept_data_loss: bool) -> None:
    """Under the lock: the database is still where the plan started, and a plan shown without
    data loss still loses none (rows may have arrived in a table it showed empty)."""
    again = agent.call("plan.downgrade", to=plan.target or "base")
    if again["current"] != plan.current:
        raise OpsError(
            f"the database moved from {label(plan.current)} to {label(again['current'])} "
            f"while this plan was shown",
            state=f"at {label(again['current'])}",
            next_command=f"invoke rollback --to={plan.to}   (review the new plan)",
        )
    recount = [dict(s) for s in plan.steps]
    loss = {**plan.loss, "steps": downgrade_loss.counted(agent, plan.loss)}
    if downgrade_loss.apply(recount, loss) and not (plan.data_loss or accept_data_loss):
        lost = [x for st in recount for x in st["data_loss"]]
        raise OpsError(
            f"the plan showed no data loss, but counted again under the lock: {'; '.join(lost)}",
            state=plan.unchanged,
            next_command=f"invoke rollback --to={plan.to} --accept-data-loss   "
            f"(a pre-rollback backup is taken first)",
        )
