"""The service and its watchers: serve, drill, metrics. (Issue 13.)"""

from __future__ import annotations

import json
import sys

from invoke import task

from dbops import events
from dbops.progress import wanted
from dbops.tasks import guarded, observed_task, settings


@task(
    help={
        "dry_run": "print the schedule (next and last tick of each job) and exit",
        "log_format": "text or json (default DBOPS_LOG_FORMAT)",
    }
)
@guarded
def serve(c, dry_run=False, log_format=None):
    """Run scheduled backups and restore drills until stopped (DBOPS_*_SCHEDULE, cron).

    The compose service `dbops` (docker compose --profile ops up -d dbops) runs the same."""
    from dbops import serve as service
    from dbops.ops import schedule

    s = settings(c)
    if dry_run:
        for row in schedule.describe(s):
            print(
                f"{row['job']:7} {row['schedule']:16} next {row['next'] or '-'}  "
                f"last tick {row['last_tick'] or 'never'}"
            )
        return
    service.serve(s, log_format)


@observed_task(
    {
        "file": "the backup to drill (default: the newest verified one)",
        "json": "print the drill record as JSON",
    },
    notify=True,
)
def drill(c, file="latest", json_=False):
    """Restore the newest verified backup into a scratch database, check it, time it, drop it.

    Checks: tables, row counts and alembic revision against the manifest, then every *.sql
    in DBOPS_DRILL_CHECKS (each must return true). The result goes to the audit record."""
    from dbops.ops import drill as drill_op
    from dbops.ops.output import print_note

    res = drill_op.drill(settings(c), file=file, progress=wanted() and not json_, warn=print_note)
    events.note(backup=res["backup"], revisions=res["revisions"], restore_s=res["restore_s"])
    if json_:
        print(json.dumps(res, indent=2, default=str))
        return
    print(f"drill passed: {res['backup']}")
    print(
        f"  restored in {res['restore_s']:.1f} s (RTO), {res['tables']} tables, {res['rows']} rows "
        f"and the alembic revision equal the manifest's"
    )
    for ch in res["checks"]:
        print(f"  check {ch['check']}: passed")
    print("  scratch database dropped")


@task(help={"print": "print the metrics instead of writing DBOPS_METRICS_FILE"})
@guarded
def metrics(c, print_=False):
    """Write the Prometheus metrics file now (DBOPS_METRICS_FILE), from the durable state."""
    from prometheus_client import generate_latest

    from dbops import metrics as metrics_mod

    s = settings(c)
    if print_ or s.get("DBOPS_METRICS_FILE") is None:
        sys.stdout.write(generate_latest(metrics_mod.registry(s)).decode())
        return
    print(f"written: {metrics_mod.write(s)}")
