"""invoke k8s-job --render: the Kubernetes Job that runs one dbops task (default: migrate, with
its verified backup) before the application's new version rolls out.

The documented homes of a migration on Kubernetes are a Job in a Helm pre-upgrade hook or an Argo
CD PreSync hook — not an initContainer, which runs once per replica and races. The Job:
``backoffLimit: 0`` (a failed migration is never retried blind), ``activeDeadlineSeconds``
(DBOPS_K8S_JOB_DEADLINE), ``restartPolicy: Never``, the backups on a PersistentVolumeClaim
(DBOPS_K8S_BACKUP_CLAIM) so they outlive the pod, every connection value (password included)
from a Secret (DBOPS_K8S_SECRET) through ``envFrom`` — nothing secret in the manifest or on argv.
Inside the pod the target is ``local``: the image holds dbops, the Alembic project and the
PostgreSQL client tools (pg_dump at least as new as the server): ops.Dockerfile's image is one
(dbops and tasks.py in /opt/dbops, the Alembic project in /app).

What the pod never does: set ``ENVIRONMENT`` (it comes from the Secret, so ``production``
keeps its safeguards); run without ``resources`` (DBOPS_K8S_REQUESTS / _LIMITS), without
``seccompProfile: RuntimeDefault`` (Pod Security "restricted") or as PID 1 — with
``shareProcessNamespace`` the pause container is PID 1, so the deadline's SIGTERM reaches
python as an ordinary signal (PID 1 ignores signals it has no handler for) and the task's
interruption cleanup runs within ``terminationGracePeriodSeconds``. The namespace is the
``--namespace`` flag, else DBOPS_K8S_NAMESPACE when it is set, else left out (kubectl's context
or Helm's release namespace decides). ``ttlSecondsAfterFinished`` (DBOPS_K8S_JOB_TTL) removes
a finished Job.

``--schedule "CRON"`` (backup or drill) renders a CronJob instead: ``concurrencyPolicy:
Forbid`` (never two at once: the advisory lock would refuse the second anyway),
``startingDeadlineSeconds`` (a tick missed by more is skipped, not run late in a pile),
history limits, ``timeZone`` from DBOPS_SCHEDULE_TIMEZONE.
"""

from __future__ import annotations

import posixpath
import re

from dbops.config import Settings
from dbops.errors import ConfigError

BACKUP_MOUNT = "/backups"
RUNNABLE = ("migrate", "backup", "drill", "doctor", "current", "check", "rehearse")
SCHEDULABLE = ("backup", "drill")
GRACE_S = 120  # SIGTERM to SIGKILL: a backup removes its .partial, a drill drops its scratch
STARTING_DEADLINE_S = 600
TASK_ARGS = {"backup": ["--reason", "scheduled"]}


def resource_list(text: str, name: str) -> dict[str, str]:
    """``cpu=250m,memory=256Mi`` -> {"cpu": "250m", "memory": "256Mi"}."""
    out: dict[str, str] = {}
    if text.strip().lower() == "none":
        return out
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(
                f"{name}={text!r}: expected resource=quantity pairs, e.g. cpu=250m,memory=256Mi"
            )
        out[key.strip()] = value.strip()
    return out


def resources(settings: Settings) -> dict:
    res = {}
    for key, name in (("requests", "DBOPS_K8S_REQUESTS"), ("limits", "DBOPS_K8S_LIMITS")):
        values = resource_list(settings.get(name) or "", name)
        if values:
            res[key] = values
    return res


def namespace(settings: Settings, flag: str | None = None) -> str | None:
    """The flag, else DBOPS_K8S_NAMESPACE when set anywhere, else None (the context's)."""
    if flag:
        return flag
    if "DBOPS_K8S_NAMESPACE" in settings.sources:
        return settings.get("DBOPS_K8S_NAMESPACE")
    return None


POD_SECURITY = {  # Pod Security "restricted"
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
HOOK_ANNOTATIONS = {
    # Helm: run before install/upgrade; replace the previous Job (kept until then, with its
    # logs, for inspection).
    "helm.sh/hook": "pre-install,pre-upgrade",
    "helm.sh/hook-weight": "-5",
    "helm.sh/hook-delete-policy": "before-hook-creation",
    # Argo CD: the same, as a PreSync hook.
    "argocd.argoproj.io/hook": "PreSync",
    "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
}


def _refuse_task(task: str, schedule: str | None) -> None:
    """A Job runs RUNNABLE tasks; a CronJob SCHEDULABLE ones on a valid cron schedule."""
    if task not in RUNNABLE:
        raise ConfigError(
            f"--task {task}: a Job runs one of: {', '.join(RUNNABLE)} "
            f"(tasks that ask for confirmation do not belong in a Job)"
        )
    if schedule is not None and task not in SCHEDULABLE:
        raise ConfigError(
            f"--schedule with --task {task}: a CronJob runs {' or '.join(SCHEDULABLE)} "
            "(a migration belongs to a deploy: the Job as a hook, without --schedule)"
        )
    if schedule is not None:
        _check_cron(schedule)


def _image(settings: Settings) -> str:
    image = settings.get("DBOPS_K8S_IMAGE")
    if not image:
        raise ConfigError(
            "DBOPS_K8S_IMAGE is not set: the image with dbops, the Alembic project "
            "and the PostgreSQL client tools (docs/scaling.md)",
            next_command="DBOPS_K8S_IMAGE=registry.example/app-dbops:1.2.3 invoke k8s-job --render",
        )
    return image


def _env(settings: Settings) -> list[dict]:
    """The pod's own values (the connection comes from the Secret through envFrom)."""
    alembic_ini = posixpath.join(settings.get("DBOPS_K8S_APP_DIR"), settings.backend_alembic_ini)
    values = {
        "DBOPS_TARGET": "local",
        "DBOPS_BACKUP_DIR": BACKUP_MOUNT,
        "DBOPS_ALEMBIC_INI": alembic_ini,
        "DBOPS_CACHE_DIR": "/tmp/dbops-cache",
        "DBOPS_ENV_FILE": "/dev/null",
        # no ENVIRONMENT here: it comes from the Secret (an env: entry would override it)
        "HOME": "/tmp",
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def _container(settings: Settings, task: str, image: str) -> dict:
    container = {
        "name": "dbops",
        "image": image,
        "workingDir": settings.get("DBOPS_K8S_AGENT_PATH"),
        "command": ["python", "-m", "invoke", task, *TASK_ARGS.get(task, [])],
        "envFrom": [{"secretRef": {"name": settings.get("DBOPS_K8S_SECRET")}}],
        "env": _env(settings),
        "volumeMounts": [
            {"name": "backups", "mountPath": BACKUP_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": dict(CONTAINER_SECURITY),
    }
    if res := resources(settings):
        container["resources"] = res
    return container


def _volumes(settings: Settings) -> list[dict]:
    claim = settings.get("DBOPS_K8S_BACKUP_CLAIM")
    return [
        {"name": "backups", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "tmp", "emptyDir": {}},
    ]


def _pod_spec(settings: Settings, container: dict) -> dict:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        # the pause container is PID 1: python gets SIGTERM as an ordinary signal
        "shareProcessNamespace": True,
        "terminationGracePeriodSeconds": GRACE_S,
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": _volumes(settings),
    }


def _job_spec(settings: Settings, labels: dict, pod_spec: dict) -> dict:
    return {
        "backoffLimit": 0,
        "activeDeadlineSeconds": settings.get("DBOPS_K8S_JOB_DEADLINE"),
        "ttlSecondsAfterFinished": settings.get("DBOPS_K8S_JOB_TTL"),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }


def _metadata(settings: Settings, name: str, labels: dict, namespace_flag: str | None) -> dict:
    metadata: dict = {"name": name}
    if ns := namespace(settings, namespace_flag):
        metadata["namespace"] = ns
    metadata["labels"] = labels
    return metadata


def _cron_job(
    settings: Settings, metadata: dict, labels: dict, job_spec: dict, schedule: str
) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {**metadata, "name": f"{metadata['name']}-scheduled"},
        "spec": {
            "schedule": schedule,
            "timeZone": settings.get("DBOPS_SCHEDULE_TIMEZONE"),
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_S,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"metadata": {"labels": dict(labels)}, "spec": job_spec},
        },
    }


def _hook_job(metadata: dict, job_spec: dict) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**metadata, "annotations": dict(HOOK_ANNOTATIONS)},
        "spec": job_spec,
    }


def manifest(
    settings: Settings,
    task: str = "migrate",
    *,
    schedule: str | None = None,
    namespace_flag: str | None = None,
) -> dict:
    """The Job (a Helm / Argo CD hook) that runs ``task``, or with ``schedule`` a CronJob."""
    _refuse_task(task, schedule)
    image = _image(settings)
    name = re.sub(r"[^a-z0-9-]", "-", f"dbops-{task}")
    labels = {"app.kubernetes.io/name": "dbops", "app.kubernetes.io/component": name}
    pod_spec = _pod_spec(settings, _container(settings, task, image))
    job_spec = _job_spec(settings, labels, pod_spec)
    metadata = _metadata(settings, name, labels, namespace_flag)
    if schedule is not None:
        return _cron_job(settings, metadata, labels, job_spec, schedule)
    return _hook_job(metadata, job_spec)


def _check_cron(expr: str) -> None:
    """Five fields, as Kubernetes reads them (a 6th, seconds, is the service's, not a CronJob's)."""
    from dbops.ops import schedule as sched

    fields = expr.split()
    try:
        if len(fields) != 5:
            raise ValueError(f"{len(fields)} fields (a CronJob takes 5)")
        sched.cron_trigger(expr)
    except ValueError as exc:
        raise ConfigError(
            f"--schedule {expr!r} is not a cron schedule: {exc}",
            next_command='invoke k8s-job --render --task backup --schedule "0 3 * * *"',
        ) from None


def render(
    settings: Settings,
    task: str = "migrate",
    *,
    schedule: str | None = None,
    namespace_flag: str | None = None,
) -> str:
    doc = manifest(settings, task, schedule=schedule, namespace_flag=namespace_flag)
    what = (
        f"a CronJob: invoke {task} on '{schedule}'"
        if schedule
        else f"invoke {task} as a Helm pre-upgrade / Argo CD PreSync hook"
    )
    head = (
        f"# {what} (rendered by invoke k8s-job).\n"
        f"# Secret {settings.get('DBOPS_K8S_SECRET')} holds POSTGRES_HOST, POSTGRES_PORT, "
        "POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB and ENVIRONMENT; it and the claim "
        f"{settings.get('DBOPS_K8S_BACKUP_CLAIM')} must exist first (docs/scaling.md).\n"
    )
    import yaml  # only here: the images that run tasks need no YAML library

    return head + yaml.safe_dump(doc, sort_keys=False)
