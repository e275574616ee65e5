"""Schema state and migrations: current, history, heads, migrate, rollback, stamp, check."""

from __future__ import annotations

import json

from invoke import task

from dbops import events
from dbops.errors import OpsError
from dbops.ops import check as check_op
from dbops.ops import migrate as migrate_op
from dbops.ops import rollback as rollback_op
from dbops.ops import stamp as stamp_op
from dbops.ops import status as status_op
from dbops.ops.output import print_line, print_note
from dbops.tasks import guarded, observed_task, render, settings


@task(help={"json": "print the full status as JSON (for scripts)"})
@guarded
def current(c, json_=False):
    """Show the database's revision, the heads, and what is pending."""
    st = status_op.read_status(settings(c))
    print(json.dumps(st, indent=2) if json_ else status_op.format_current(st))
    return st


@task
@guarded
def history(c):
    """List every revision, oldest first, marking what is applied."""
    st = status_op.read_status(settings(c))
    if not render.is_terminal():
        print(status_op.format_history(st))
        return
    rows, styles = [], {}
    for i, h in enumerate(st["history"]):
        state = "current" if h["is_current"] else ("applied" if h["applied"] else "pending")
        tags = ", ".join([*(["head"] if h["is_head"] else []), *h["branch_labels"]])
        rows.append((state, h["down_revision"] or "<base>", h["revision"], tags, h["message"]))
        styles[i] = {"current": "bold green", "pending": "yellow"}.get(state)
    render.table(
        [
            ("state", "left"),
            ("from", "left"),
            ("revision", "left"),
            ("tags", "left"),
            ("message", "left"),
        ],
        rows,
        styles=styles,
    )


@task
@guarded
def heads(c):
    """List the script directory's heads (more than one: how to merge)."""
    print(status_op.format_heads(status_op.read_status(settings(c))))


@observed_task(
    {
        "to": "target revision: head (default), full id, unique prefix or branch label",
        "sql": "print the offline SQL of the pending revisions and stop (changes nothing)",
        "no_backup": "skip the pre-migrate backup (you have one, or the data is disposable)",
        "accept_risk": "production: run although the rehearsal's verdict is over the limits; "
        "the reason is audited",
    },
    notify=True,
)
def migrate(c, to="head", sql=False, no_backup=False, accept_risk=None):
    """Upgrade (default: to head) safely: preflight, backup, lock, verify.

    One revision at a time with lock_timeout and bounded retries; then the revision and an
    autogenerate diff against the models are verified. See docs/migrations.md."""
    # With --sql, stdout is the SQL alone (pipe it to a file); the preflight goes to stderr.
    out = print_note if sql else print_line
    res = migrate_op.migrate(
        settings(c),
        to=to,
        sql=sql,
        backup=not no_backup,
        out=out,
        accept_risk=accept_risk,
        warn=print_note,
    )
    events.note(backup=res.get("backup"), revisions=res.get("after"))
    if sql:
        print(res["sql"], end="" if res["sql"].endswith("\n") else "\n")
        return None
    if res.get("applied"):
        print(
            f"applied {len(res['applied'])} revision(s) in {res.get('seconds', 0):.1f} s"
            + (f"; backup: {res['backup']}" if res.get("backup") else "")
        )
    models = "; schema matches the models" if res.get("models_checked") else ""
    print(
        f"verified: database is at {status_op.label(res['after'])} (target {res['target']}){models}"
    )
    return res


@task(
    help={
        "to": "target revision (default head)",
        "from_": "the data: latest (newest verified full backup at the live revision), fresh "
        "(take one now) or a backup file",
        "keep": "keep the copy (dbops_scratch_rehearse_…) to look at; the next rehearsal sweeps it",
        "json": "print the report as JSON (for CI)",
    }
)
@guarded
def rehearse(c, to="head", from_="latest", keep=False, json_=False):
    """Run the pending revisions on a restored copy, measuring locks, rewrites and blocking.

    Per revision and statement: the locks held and for how long, table rewrites, how long a
    reader and a writer of each table were blocked; a verdict naming the pattern and the safer
    way; the predicted duration. Stored for migrate's preflight. See docs/rehearsal.md."""
    from dbops.ops import rehearse as rehearse_op

    s = settings(c)
    out = print_note if json_ else print_line
    report = rehearse_op.rehearse(s, to, source=from_, keep=keep, out=out)
    if json_:
        print(json.dumps(report, indent=1, default=str))
        return
    for line in (
        rehearse_op.format_report(report, rehearse_op.limits(s))
        if report["revisions"]
        else ["nothing pending"]
    ):
        print(line)
    if report.get("kept"):
        print(f"kept the copy: {report['kept']}")
    if report.get("stored"):
        print(f"stored: {report['stored']}")


@observed_task(
    {
        "to": "target: full id, unique prefix, -1/-2 (relative), base, or a branch label",
        "yes": (
            "do not ask for confirmation (a plan that drops data still needs --accept-data-loss)"
        ),
        "accept_data_loss": (
            "accept a plan whose downgrades lose rows or values (dropped tables or columns, "
            "TRUNCATE, a type change, UPDATE/DELETE), or whose loss cannot be counted"
        ),
        "no_backup": "skip the pre-rollback backup",
        "no_putback": (
            "do not put back, from the migrate's backup, the tables and columns the downgrade "
            "brings back empty"
        ),
    },
    notify=True,
)
def rollback(c, to=None, yes=False, accept_data_loss=False, no_backup=False, no_putback=False):
    """Downgrade to an earlier revision (plan, data-loss check, backup, lock, verify).

    Prints each downgrade and whether it drops data, offers a backup taken at REV, backs up,
    downgrades one revision at a time under the lock, verifies the revision."""
    if not to:
        raise OpsError(
            "rollback needs --to=REV (e.g. --to=-1, --to=base, --to=<revision>)",
            next_command="invoke history   (to pick one)",
        )
    res = rollback_op.rollback(
        settings(c),
        to,
        yes=yes,
        accept_data_loss=accept_data_loss,
        backup=not no_backup,
        putback=not no_putback,
    )
    events.note(backup=res.get("backup"), revisions=res.get("after"))
    if res["downgraded"]:
        print(
            f"downgraded {len(res['downgraded'])} revision(s)"
            + (f"; pre-rollback backup: {res['backup']}" if res.get("backup") else "")
        )
    print(f"verified: database is at {status_op.label(res['after'])}")


@observed_task(
    {
        "to": "the revision the version row should name (full id, prefix, base, head)",
        "yes": "do not ask for confirmation",
    },
    notify=True,
)
def stamp(c, to=None, yes=False):
    """Rewrite the version row WITHOUT changing the schema (recovery only; audited)."""
    if not to:
        raise OpsError(
            "stamp needs --to=REV",
            next_command="invoke doctor   (which revision the schema matches)",
        )
    res = stamp_op.stamp(settings(c), to, yes=yes)
    print(
        f"stamped: version row is {status_op.label(res['after'])} (was "
        f"{status_op.label(res['before'])}); no schema was changed"
    )


@task(
    help={
        "no_squawk": "skip the squawk lint of the offline SQL",
        "baseline": "accept every squawk finding of the revisions there are now (already "
        "shipped) in the accept file (DBOPS_SQUAWK_ACCEPT), each with a baseline reason",
    }
)
@guarded
def check(c, no_squawk=False, baseline=False):
    """CI gate: one head, stairway, models match, squawk. Non-zero on any failure.

    The stairway runs on a scratch database; squawk lints every revision's offline SQL.
    Accepting a known finding: docs/migrations.md."""
    check_op.check(settings(c), squawk=not no_squawk, baseline=baseline)
    print("check passed")
