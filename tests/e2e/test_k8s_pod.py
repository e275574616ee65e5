"""The rendered Kubernetes Job really runs (issue #14): `invoke k8s-job --render --task migrate`,
its pod template played by `podman kube play` on the compose project's network against the e2e
db container, migrates the database to head with a verified backup on the claimed volume.

No cluster runs here; podman 4.3.1 plays kind Pod (not Job, not Secret). What is adapted, and
only that, is marked ADAPTED below; everything else is the rendered manifest as it is."""

from __future__ import annotations

import base64
import copy
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from dbops import catalog
from dbops.config import load_settings
from tests.conftest import ROOT
from tests.e2e.conftest import PROJECT
from tests.fixtures.projects import SAMPLE_HEAD, SAMPLE_REVS

pytestmark = pytest.mark.e2e

FROM = SAMPLE_REVS[2]
SECRET_NAME = f"{PROJECT}-db"
CLAIM = f"{PROJECT}-k8s-backups"


def ok(done):
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done


class Podman:
    """podman against the service scripts/containers/setup started (the one compose talks to)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        url = env.get("DOCKER_HOST", "")
        self.argv = ["podman", *(["--url", url] if url.startswith("unix://") else [])]

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.argv, *args],
            env=self.env,
            cwd=ROOT,
            text=True,
            input=input,
            capture_output=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )


def job_image(podman: Podman, tmp_path: Path) -> str:
    """DBOPS_K8S_IMAGE: the e2e ops image (build-images) with dbops/ and tasks.py COPYed into
    /opt/dbops, as ops.Dockerfile does (the e2e image leaves them to compose's bind mount; a
    Job has no checkout to mount). COPY only: podman builds it without running a container."""
    base = podman.env.get("DBOPS_OPS_IMAGE", "localhost/dbops-ops:e2e")
    ctx = tmp_path / "image"
    shutil.copytree(ROOT / "dbops", ctx / "dbops", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("tasks.py", "pyproject.toml"):
        shutil.copy(ROOT / name, ctx / name)
    (ctx / "Containerfile").write_text(
        f"FROM {base}\nUSER root\nCOPY dbops /opt/dbops/dbops\n"
        f"COPY tasks.py pyproject.toml /opt/dbops/\nUSER app\n"
    )
    image = f"localhost/{PROJECT}-k8s-job:{uuid.uuid4().hex[:8]}"
    ok(
        podman(
            "build", "-q", "--layers=false", "-f", str(ctx / "Containerfile"), "-t", image, str(ctx)
        )
    )
    return image


def pod_of(job: dict) -> dict:
    """The Job's pod template as a kind: Pod, adapted only where podman 4.3.1 cannot follow."""
    template = copy.deepcopy(job["spec"]["template"])
    spec = template["spec"]
    # ADAPTED: podman 4.3.1 ignores the pod-level securityContext (runAsUser, runAsGroup,
    # fsGroup, runAsNonRoot are not in its supported fields); it honours the container-level
    # runAsUser/runAsGroup, so the pod's user and group are set there, as Kubernetes would
    # apply them to the container. fsGroup: the test chowns the claimed volume instead.
    pod_sc = spec.pop("securityContext")
    for c in spec["containers"]:
        c["securityContext"] = {
            "runAsUser": pod_sc["runAsUser"],
            "runAsGroup": pod_sc["runAsGroup"],
            **c.get("securityContext", {}),
        }
    # ADAPTED: the Job's own fields (backoffLimit, activeDeadlineSeconds, the hook annotations,
    # the namespace) have no meaning for a podman pod; the deadline becomes the test's wait.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": job["metadata"]["name"], "labels": template["metadata"]["labels"]},
        "spec": spec,
    }


def compose_network(stack) -> str:
    compose = stack.env.get("DBOPS_COMPOSE", "docker compose").split()
    cid = ok(
        subprocess.run(
            [*compose, "ps", "-q", "db"],
            cwd=ROOT,
            env=stack.env,
            text=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
    ).stdout.split()[0]
    nets = json.loads(
        ok(
            Podman(stack.env)("inspect", "--format", "{{json .NetworkSettings.Networks}}", cid)
        ).stdout
    )
    [net] = list(nets)
    return net


def test_the_rendered_job_migrates_the_e2e_database_with_a_verified_backup(stack, tmp_path):
    podman = Podman(stack.env)
    if not shutil.which("podman") or podman("version").returncode != 0:
        pytest.skip(
            "no podman answers here (kube play needs podman; the stack runs on another engine)"
        )
    if os.geteuid() != 0:
        pytest.skip("the claimed volume is chowned to the pod's user: needs root")
    found = stack.revision()
    # Below head, with rows, so the pod has something to migrate and to back up.
    stack.go_to(FROM)
    assert stack.revision() == FROM
    stack.psql(
        "INSERT INTO users (username, email) SELECT 'k' || g, 'k' || g || '@x.org' "
        "FROM generate_series(1, 200) g"
    )
    rows = stack.psql("SELECT count(*) FROM users")

    image = job_image(podman, tmp_path)
    rendered = ok(
        stack.invoke(
            "k8s-job",
            "--render",
            "--task",
            "migrate",
            env={
                "DBOPS_K8S_IMAGE": image,
                "DBOPS_K8S_SECRET": SECRET_NAME,
                "DBOPS_K8S_BACKUP_CLAIM": CLAIM,
                "DBOPS_K8S_NAMESPACE": PROJECT,
            },
        )
    )
    job = yaml.safe_load(rendered.stdout)
    assert job["kind"] == "Job" and stack.password not in rendered.stdout
    pod = pod_of(job)
    [container] = pod["spec"]["containers"]
    name = f"{pod['metadata']['name']}-{container['name']}"  # podman's name for it
    kube = tmp_path / "pod.yaml"
    kube.write_text(yaml.safe_dump(pod, sort_keys=False))
    deadline = float(job["spec"]["activeDeadlineSeconds"])
    try:
        # ADAPTED: podman 4.3.1 plays no kind: Secret; envFrom.secretRef reads a podman secret
        # holding the Secret's data as JSON (base64 values, as a Secret's data). The password
        # goes in on stdin, never on argv.
        data = {
            "POSTGRES_HOST": "db",
            "POSTGRES_PORT": "5432",
            "POSTGRES_USER": stack.env["POSTGRES_USER"],
            "POSTGRES_PASSWORD": stack.password,
            "POSTGRES_DB": stack.env["POSTGRES_DB"],
        }
        podman("secret", "rm", SECRET_NAME)
        ok(
            podman(
                "secret",
                "create",
                SECRET_NAME,
                "-",
                input=json.dumps(
                    {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
                ),
            )
        )
        # The claim is a podman named volume (claimName); ADAPTED: fsGroup, which podman
        # ignores, is done by hand: the volume belongs to the pod's user and group.
        podman("volume", "rm", "-f", CLAIM)
        ok(podman("volume", "create", CLAIM))
        folder = Path(
            ok(podman("volume", "inspect", "--format", "{{.Mountpoint}}", CLAIM)).stdout.strip()
        )
        sc = container["securityContext"]
        os.chown(folder, sc["runAsUser"], sc["runAsGroup"])
        # ADAPTED: the pod joins the compose project's network, where the db service answers
        # as `db` (a cluster's Service name, here compose's network alias).
        played = ok(podman("kube", "play", "--network", compose_network(stack), str(kube)))
        waited = podman("wait", name, timeout=deadline)
        logs = podman("logs", name)
        log = logs.stdout + logs.stderr
        assert waited.returncode == 0, waited.stderr
        assert waited.stdout.strip() == "0", (
            f"the pod's container exited {waited.stdout.strip()}:\n{log[-6000:]}"
        )
        inspect = json.loads(ok(podman("inspect", name)).stdout)[0]
        assert inspect["Config"]["User"] == f"{sc['runAsUser']}:{sc['runAsGroup']}"
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        assert stack.password not in log + played.stdout + played.stderr + kube.read_text()
        assert f"verified: database is at {SAMPLE_HEAD}" in log

        # The database is at head, its rows kept.
        assert stack.revision() == SAMPLE_HEAD
        assert stack.psql("SELECT count(*) FROM users") == rows
        # A verified pre-migrate backup at the revision it started from, on the claimed
        # volume, written by the pod's user.
        settings = load_settings(ROOT, environ={**stack.env, "DBOPS_BACKUP_DIR": str(folder)})
        backups = catalog.list_backups(settings, database=stack.env["POSTGRES_DB"], full=True)
        pre = [b for b in backups if b["reason"] == "pre-migrate"]
        assert len(pre) == 1, backups
        assert pre[0]["verified"] and not pre[0]["problems"], pre[0]
        assert pre[0]["revisions"] == [FROM]
        assert Path(pre[0]["path"]).stat().st_uid == sc["runAsUser"]
    finally:
        podman("kube", "down", str(kube))
        podman("pod", "rm", "-f", pod["metadata"]["name"])
        podman("secret", "rm", SECRET_NAME)
        podman("volume", "rm", "-f", CLAIM)
        podman("rmi", "-f", image)
        stack.return_to(found)  # as the other e2e tests expect it
