"""Schema state and migrations: current, history, heads, migrate, rollback, stamp, check."""

from __future__ import annotations

import json
import sys

from invoke import task

from dbops.errors import OpsError
from dbops.ops import check as check_op
from dbops.ops import migrate as migrate_op
from dbops.ops import rollback as rollback_op
from dbops.ops import stamp as stamp_op
from dbops.ops import status as status_op
from dbops.tasks import guarded, settings


@task(help={"json": "print the full status as JSON (for scripts)"})
@guarded
def current(c, json_=False):
    """Show the database's revision, the heads, and what is pending."""
    st = status_op.read_status(settings(c))
    print(json.dumps(st, indent=2) if json_ else status_op.format_current(st))


@task
@guarded
def history(c):
    """List every revision, oldest first, marking what is applied."""
    print(status_op.format_history(status_op.read_status(settings(c))))


@task
@guarded
def heads(c):
    """List the script directory's heads (more than one: how to merge)."""
    print(status_op.format_heads(status_op.read_status(settings(c))))


@task(help={"to": "target revision: head (default), full id, unique prefix or branch label",
            "sql": "print the offline SQL of the pending revisions and stop (changes nothing)",
            "no_backup": "skip the pre-migrate backup (you have one, or the data is disposable)"})
@guarded
def migrate(c, to="head", sql=False, no_backup=False):
    """Upgrade (default: to head) safely: preflight, backup, lock, verify.

    One revision at a time with lock_timeout and bounded retries; then the revision and an
    autogenerate diff against the models are verified. See docs/migrations.md."""
    # With --sql, stdout is the SQL alone (pipe it to a file); the preflight goes to stderr.
    out = (lambda line: print(line, file=sys.stderr, flush=True)) if sql else migrate_op._print
    res = migrate_op.migrate(settings(c), to=to, sql=sql, backup=not no_backup, out=out)
    if sql:
        print(res["sql"], end="" if res["sql"].endswith("\n") else "\n")
        return
    if res.get("applied"):
        print(f"applied {len(res['applied'])} revision(s) in {res.get('seconds', 0):.1f} s"
              + (f"; backup: {res['backup']}" if res.get("backup") else ""))
    models = "; schema matches the models" if res.get("models_checked") else ""
    print(f"verified: database is at {status_op.label(res['after'])} (target {res['target']}){models}")


@task(help={"to": "target: full id, unique prefix, -1/-2 (relative), base, or a branch label",
            "yes": "do not ask for confirmation (a plan that drops data still needs --accept-data-loss)",
            "accept_data_loss": "accept a plan whose downgrades drop tables or columns",
            "no_backup": "skip the pre-rollback backup"})
@guarded
def rollback(c, to=None, yes=False, accept_data_loss=False, no_backup=False):
    """Downgrade to an earlier revision (plan, data-loss check, backup, lock, verify).

    Prints each downgrade and whether it drops data, offers a backup taken at REV, backs up,
    downgrades one revision at a time under the lock, verifies the revision."""
    if not to:
        raise OpsError("rollback needs --to=REV (e.g. --to=-1, --to=base, --to=<revision>)",
                       next_command="invoke history   (to pick one)")
    res = rollback_op.rollback(settings(c), to, yes=yes, accept_data_loss=accept_data_loss,
                               backup=not no_backup)
    if res["downgraded"]:
        print(f"downgraded {len(res['downgraded'])} revision(s)"
              + (f"; pre-rollback backup: {res['backup']}" if res.get("backup") else ""))
    print(f"verified: database is at {status_op.label(res['after'])}")


@task(help={"to": "the revision the version row should name (full id, prefix, base, head)",
            "yes": "do not ask for confirmation"})
@guarded
def stamp(c, to=None, yes=False):
    """Rewrite the version row WITHOUT changing the schema (recovery only; audited)."""
    if not to:
        raise OpsError("stamp needs --to=REV", next_command="invoke doctor   (which revision the schema matches)")
    res = stamp_op.stamp(settings(c), to, yes=yes)
    print(f"stamped: version row is {status_op.label(res['after'])} (was {status_op.label(res['before'])}); "
          f"no schema was changed")


@task(help={"no_squawk": "skip the squawk lint of the offline SQL"})
@guarded
def check(c, no_squawk=False):
    """CI gate: one head, stairway, models match, squawk. Non-zero on any failure.

    The stairway runs on a scratch database; squawk lints every revision's offline SQL.
    Accepting a known finding: docs/migrations.md."""
    check_op.check(settings(c), squawk=not no_squawk)
    print("check passed")


TASKS = [current, history, heads, migrate, rollback, stamp, check]
