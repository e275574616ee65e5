"""Diagnosis and recovery: doctor, recover. (Issue 5.)"""

from __future__ import annotations

import json

from invoke import Exit, task

from dbops.ops import doctor as doctor_op
from dbops.ops import recover as recover_op
from dbops.tasks import guarded, settings


@task(help={
    "apply": "stamp alembic_version to the exactly matching revision (after confirmation)",
    "yes": "confirm without a prompt (required with ENVIRONMENT=production and no terminal)",
    "to": "when several revisions give the same schema: which one to stamp",
    "no_cache": "rebuild the expected schemas instead of using the cache",
    "json": "print the analysis as JSON (for scripts)",
})
@guarded
def recover(c, apply=False, yes=False, to=None, no_cache=False, json_=False):
    """Find the revision the live schema is exactly (read-only); --apply stamps it."""
    def show(report):
        if not json_:
            print(recover_op.format_report(report), flush=True)

    report = recover_op.recover(settings(c), apply=apply, yes=yes, to=to,
                                use_cache=not no_cache, on_report=show)
    if json_:
        print(json.dumps(report, indent=2, default=str))
    else:
        applied = report["applied"]
        if applied and applied["stamped"]:
            print(f"stamped:   alembic_version is now {recover_op._label(applied['to'])} "
                  f"(was {recover_op._label(applied['before'])}); audit record written")
        elif applied:
            print("nothing to stamp: alembic_version already agrees with the schema")
        print(f"next: {report['next']}")
    if not report["matches"]:
        raise Exit(code=1)


@task(help={"json": "print every check as JSON (for scripts)",
            "no_schema": "skip the live-schema check (no scratch database if not cached)"})
@guarded
def doctor(c, json_=False, no_schema=False):
    """Read-only health check of the target: one screen, ending with the next command."""
    report = doctor_op.doctor(settings(c), schema=not no_schema)
    print(json.dumps(report, indent=2, default=str) if json_ else doctor_op.format_report(report))
    if any(ch["status"] == "fail" for ch in report["checks"]):
        raise Exit(code=1)


TASKS = [recover, doctor]
