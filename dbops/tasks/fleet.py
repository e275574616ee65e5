"""Beyond one database: invoke fleet (many databases, one plan) and invoke k8s-job (the migrate
Job for a Helm pre-upgrade / Argo CD PreSync hook). docs/scaling.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from invoke import Exit, task

from dbops.config import Settings, load_settings, whole_flag
from dbops.errors import ConfigError
from dbops.fleet import run as fleet_run
from dbops.ops import k8s_job as k8s_job_op
from dbops.tasks import guarded


def settings(c) -> Settings:
    """The runner's settings. It has no database of its own (each member names one, and a
    member without POSTGRES_USER/POSTGRES_DB is refused by name), so those two default to a
    placeholder at the lowest layer; .env and the environment still win."""
    cfg = dict(c.config.get("dbops", {}) or {})
    project_dir = cfg.pop("project_dir", None) or Path.cwd()
    return load_settings(project_dir, {"POSTGRES_USER": "-", "POSTGRES_DB": "-", **cfg})


def _count(flag: str, value, minimum: int, default: int) -> int:
    """A whole-number flag (its default when not given); a bad one is a ConfigError, not a
    traceback (invoke's own int flags raise ValueError)."""
    n = whole_flag(flag, value, minimum, 100_000)
    return default if n is None else n


@task(
    help={
        "verb": f"what to run on every database: {', '.join(fleet_run.VERBS)}",
        "parallel": "at most N databases at once (default 1; mind the server's max_connections)",
        "per_server": "at most N at once on any one server (default 0: only --parallel bounds)",
        "canary": "run the first K databases of the plan first; any canary failure stops the run",
        "max_failures": "start no new database once F have failed (default 1; 0 = no limit)",
        "resume": "continue the last run of this verb: skip every database it completed",
        "only": "comma-separated member names (rerun one database with the fleet's settings)",
        "to": "migrate: target revision (default head)",
        "from": "rehearse: the data, latest (default) or fresh (a new verified backup first)",
        "json": "print the result as JSON (progress goes to stderr)",
    }
)
@guarded
def fleet(
    c,
    verb,
    parallel=None,
    canary=None,
    max_failures=None,
    resume=False,
    only=None,
    to=None,
    json_=False,
    per_server=None,
    from_=None,
):
    """Run migrate|backup|doctor|current|rehearse on every database of fleet.toml.

    Canaries first, then the waves in order; each database runs the ordinary task (its own lock,
    verified backup, audit record and verification). A state file makes a killed run
    resumable. Ends with one table and the exact command for each failure."""
    flags = []
    if to:
        if verb != "migrate":
            raise ConfigError("--to applies to invoke fleet migrate only")
        flags = ["--to", to]
    if from_:
        if verb != "rehearse":
            raise ConfigError("--from applies to invoke fleet rehearse only")
        if from_ not in ("latest", "fresh"):
            raise ConfigError(
                f"--from={from_}: a fleet rehearses from latest or fresh (a file belongs to one "
                "database: invoke rehearse --from=FILE on it alone)"
            )
        flags += [f"--from={from_}"]
    out = (
        (lambda line: print(line, file=sys.stderr, flush=True))
        if json_
        else (lambda line: print(line, flush=True))
    )
    runner = fleet_run.FleetRun(
        settings(c),
        verb,
        flags=flags,
        parallel=_count("--parallel", parallel, 1, 1),
        canary=_count("--canary", canary, 0, 0),
        max_failures=_count("--max-failures", max_failures, 0, 1),
        resume=resume,
        only=[n.strip() for n in only.split(",") if n.strip()] if only else None,
        out=out,
        per_server=_count("--per-server", per_server, 0, 0),
    )
    report = runner.run()
    print(json.dumps(report, indent=2) if json_ else "\n" + fleet_run.format_summary(report))
    if report["stopped"] == "interrupted":
        raise Exit(code=130)
    if any(r["status"] not in ("ok", "done earlier") for r in report["databases"]):
        raise Exit(code=1)


@task(
    name="k8s-job",
    help={
        "render": "print the Job manifest (YAML) on stdout",
        "task": "the invoke task the Job runs (default migrate)",
        "schedule": "backup or drill: render a CronJob on this cron schedule instead of a Job",
        "namespace": "metadata.namespace (default DBOPS_K8S_NAMESPACE when set, else none)",
    },
)
@guarded
def k8s_job(c, render=False, task_="migrate", schedule=None, namespace=None):
    """Print a Kubernetes Job that runs `invoke migrate` as a Helm pre-upgrade / Argo CD PreSync hook."""  # noqa: E501
    if not render:
        raise ConfigError(
            "invoke k8s-job needs --render (it prints the manifest; it applies nothing)",
            next_command="invoke k8s-job --render --task migrate > migrate-job.yaml",
        )
    print(
        k8s_job_op.render(settings(c), task=task_, schedule=schedule, namespace_flag=namespace),
        end="",
    )
