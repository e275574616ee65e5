"""Diagnosis and recovery: doctor, recover. (Issue 5.)"""

from __future__ import annotations

import json
import sys

from invoke import Exit

from dbops import metrics
from dbops.ops import doctor as doctor_op
from dbops.ops import recover as recover_op
from dbops.ops.output import print_note
from dbops.ops.status import label
from dbops.tasks import observed_task, render, settings


@observed_task(
    {
        "apply": "stamp alembic_version to the exactly matching revision (after confirmation)",
        "yes": "confirm without a prompt (required with ENVIRONMENT=production and no terminal)",
        "to": "when several revisions give the same schema: which one to stamp",
        "no_cache": "rebuild the expected schemas instead of using the cache",
        "json": "print the analysis as JSON (for scripts)",
    },
    notify=True,
)
def recover(c, apply=False, yes=False, to=None, no_cache=False, json_=False):
    """Find the revision the live schema is exactly (read-only); --apply stamps it."""

    def show(report):
        if not json_:
            print(recover_op.format_report(report), flush=True)

    report = recover_op.recover(
        settings(c),
        apply=apply,
        yes=yes,
        to=to,
        use_cache=not no_cache,
        on_report=show,
        warn=print_note,
    )
    if json_:
        print(json.dumps(report, indent=2, default=str))
    else:
        applied = report["applied"]
        if applied and applied["stamped"]:
            print(
                f"stamped:   alembic_version is now {label(applied['to'])} "
                f"(was {label(applied['before'])}); audit record written"
            )
        elif applied:
            print("nothing to stamp: alembic_version already agrees with the schema")
        print(f"next: {report['next']}")
    if not report["matches"]:
        raise Exit(code=1)


@observed_task(
    {
        "json": "print every check as JSON (for scripts)",
        "no_schema": "skip the live-schema check (no scratch database if not cached)",
        "settle": "first record the outcome of an operation that died while applying a "
        "revision (read from the database; writes the audit record only)",
    }
)
def doctor(c, json_=False, no_schema=False, settle=False):
    """Read-only health check of the target: one screen, ending with the next command."""
    s = settings(c)
    if settle:
        from dbops.ops.settle import settle_now

        if not settle_now(s, print_note):
            print_note("nothing to settle: every applying record has its outcome")
    report = doctor_op.doctor(s, schema=not no_schema)
    why = metrics.save_doctor(s, report)  # the metrics file shows each check (on exit)
    if why:
        print(f"note: doctor's record for the metrics file not kept: {why}", file=sys.stderr)
    if json_:
        print(json.dumps(report, indent=2, default=str))
    elif render.is_terminal():
        _doctor_table(report)
    else:
        print(doctor_op.format_report(report))
    if any(ch["status"] == "fail" for ch in report["checks"]):
        from dbops.tasks import write_result

        write_result({"ok": False, "error": "doctor found a failing check", "result": report})
        raise Exit(code=1)
    return report


def _doctor_table(report: dict) -> None:
    """doctor's report as a table (from its result data; the plain text is format_report)."""
    marks = {
        "ok": ("ok", "green"),
        "warn": ("WARN", "yellow"),
        "fail": ("FAIL", "bold red"),
        "unknown": ("??", "magenta"),
    }
    checks = report["checks"]
    render.table(
        [("", "left"), ("check", "left"), ("", "left")],
        [(marks.get(c["status"], ("?", None))[0], c["name"], c["summary"]) for c in checks],
        notes={i: [f"- {d}" for d in c["details"][:6] if d] for i, c in enumerate(checks)},
        styles={i: marks.get(c["status"], ("?", None))[1] for i, c in enumerate(checks)},
        title=f"dbops doctor: {report['target']} [{report['environment']}]",
    )
    print(
        f"next: {report['next']}"
        + (f"   # {report['next_reason']}" if report["next"] != "nothing to do" else "")
    )
