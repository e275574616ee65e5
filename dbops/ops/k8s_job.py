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
"""

from __future__ import annotations

import posixpath
import re

from dbops.config import Settings
from dbops.errors import ConfigError

BACKUP_MOUNT = "/backups"
RUNNABLE = ("migrate", "backup", "doctor", "current", "check", "rehearse")


def manifest(settings: Settings, task: str = "migrate") -> dict:
    if task not in RUNNABLE:
        raise ConfigError(
            f"--task {task}: a Job runs one of: {', '.join(RUNNABLE)} "
            f"(tasks that ask for confirmation do not belong in a hook)"
        )
    image = settings.get("DBOPS_K8S_IMAGE")
    if not image:
        raise ConfigError(
            "DBOPS_K8S_IMAGE is not set: the image with dbops, the Alembic project "
            "and the PostgreSQL client tools (docs/scaling.md)",
            next_command="DBOPS_K8S_IMAGE=registry.example/app-dbops:1.2.3 invoke k8s-job --render",
        )
    name = re.sub(r"[^a-z0-9-]", "-", f"dbops-{task}")
    workdir = settings.get("DBOPS_K8S_AGENT_PATH")
    labels = {"app.kubernetes.io/name": "dbops", "app.kubernetes.io/component": name}
    env = [
        {"name": "DBOPS_TARGET", "value": "local"},
        {"name": "DBOPS_BACKUP_DIR", "value": BACKUP_MOUNT},
        {
            "name": "DBOPS_ALEMBIC_INI",
            "value": posixpath.join(
                settings.get("DBOPS_K8S_APP_DIR"), settings.backend_alembic_ini
            ),
        },
        {"name": "DBOPS_CACHE_DIR", "value": "/tmp/dbops-cache"},
        {"name": "DBOPS_ENV_FILE", "value": "/dev/null"},
        {"name": "ENVIRONMENT", "value": settings.environment},
        {"name": "HOME", "value": "/tmp"},
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": settings.get("DBOPS_K8S_NAMESPACE"),
            "labels": labels,
            "annotations": {
                # Helm: run before install/upgrade; replace the previous Job (kept until then,
                # with its logs, for inspection).
                "helm.sh/hook": "pre-install,pre-upgrade",
                "helm.sh/hook-weight": "-5",
                "helm.sh/hook-delete-policy": "before-hook-creation",
                # Argo CD: the same, as a PreSync hook.
                "argocd.argoproj.io/hook": "PreSync",
                "argocd.argoproj.io/hook-delete-policy": "BeforeHookCreation",
            },
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": settings.get("DBOPS_K8S_JOB_DEADLINE"),
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                    },
                    "containers": [
                        {
                            "name": "dbops",
                            "image": image,
                            "workingDir": workdir,
                            "command": ["python", "-m", "invoke", task],
                            "envFrom": [{"secretRef": {"name": settings.get("DBOPS_K8S_SECRET")}}],
                            "env": env,
                            "volumeMounts": [
                                {"name": "backups", "mountPath": BACKUP_MOUNT},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": [
                        {
                            "name": "backups",
                            "persistentVolumeClaim": {
                                "claimName": settings.get("DBOPS_K8S_BACKUP_CLAIM")
                            },
                        },
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def render(settings: Settings, task: str = "migrate") -> str:
    head = (
        f"# invoke {task} as a Helm pre-upgrade / Argo CD PreSync hook (rendered by invoke "
        f"k8s-job).\n# Secret {settings.get('DBOPS_K8S_SECRET')} holds POSTGRES_HOST, "
        "POSTGRES_PORT, POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB.\n"
    )
    import yaml  # only here: the images that run tasks need no YAML library

    return head + yaml.safe_dump(manifest(settings, task), sort_keys=False)
