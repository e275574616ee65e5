"""DBOPS_TARGET=kubernetes and invoke k8s-job. No cluster runs here: the kubectl argv of each
operation is checked against a stand-in kubectl (tests/fixtures/fake_kubectl.py) that records
it; the same stand-in runs `exec` on this machine, so a real `invoke migrate` goes through the
Kubernetes target against real PostgreSQL. The rendered Job is validated against the
Kubernetes JSON schema offline (kubernetes-validate, from PyPI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from dbops.config import load_settings
from dbops.errors import ConfigError
from dbops.ops import k8s_job
from dbops.seam import KubernetesTarget, target_for
from tests.conftest import ALEMBIC_INI, ROOT
from tests.fixtures.projects import SAMPLE_HEAD, version_rows

SECRET = "s3cr3t-Pa55"
FAKE = ROOT / "tests" / "fixtures" / "fake_kubectl.py"
K8S_VERSION = "1.30.0"


def make(tmp_path, **env):
    base = {
        "DBOPS_ENV_FILE": str(tmp_path / "none"),
        "POSTGRES_USER": "app",
        "POSTGRES_DB": "shop",
        "POSTGRES_PASSWORD": SECRET,
        "DBOPS_TARGET": "kubernetes",
    }
    return load_settings(ROOT, environ={**base, **env})


# The agent as backend() settings run it in the backend pod, after `env` and its variables.
AGENT = ["python", "-m", "dbops.agent", "--ini", "/app/alembic.ini"]


def backend(tmp_path, fake_kubectl, **env):
    """Settings whose agent runs in the stand-in's backend pod (app=backend, /srv/dbops)."""
    return make(
        tmp_path,
        DBOPS_KUBECTL=fake_kubectl.kubectl,
        DBOPS_K8S_BACKEND_SELECTOR="app=backend",
        DBOPS_K8S_AGENT_PATH="/srv/dbops",
        DBOPS_BACKEND_ALEMBIC_INI="/app/alembic.ini",
        **env,
    )


def through_pods(fake_kubectl) -> dict:
    """The environment of `invoke` through the stand-in: this checkout as the agent's path in
    the backend pod, and no password on this side (the pods hold it)."""
    return {
        "DBOPS_TARGET": "kubernetes",
        "DBOPS_KUBECTL": fake_kubectl.kubectl,
        "DBOPS_K8S_AGENT_PATH": str(ROOT),
        "DBOPS_BACKEND_ALEMBIC_INI": "alembic.ini",
        "POSTGRES_PASSWORD": "",
    }


@pytest.fixture
def fake_kubectl(tmp_path, monkeypatch):
    """The stand-in, with a db pod and a backend pod; returns the recorded calls."""
    log, pods = tmp_path / "kubectl.log", tmp_path / "pods.json"
    pods.write_text(
        json.dumps(
            {
                "pods": {
                    "pg-0": {"labels": "app=db", "env": {}},
                    "api-7f9c": {"labels": "app=backend", "env": {}},
                }
            }
        )
    )
    monkeypatch.setenv("FAKE_K8S_LOG", str(log))
    monkeypatch.setenv("FAKE_K8S_PODS", str(pods))

    def calls():
        return [json.loads(ln) for ln in log.read_text().splitlines()] if log.exists() else []

    calls.kubectl = f"{sys.executable} {FAKE}"
    calls.pods = pods
    return calls


def test_pg_tools_exec_into_the_db_pod_found_by_label(tmp_path, fake_kubectl):
    s = make(
        tmp_path,
        DBOPS_KUBECTL=fake_kubectl.kubectl,
        DBOPS_K8S_CONTEXT="prod-eu",
        DBOPS_K8S_NAMESPACE="shop",
        DBOPS_K8S_DB_CONTAINER="postgres",
    )
    launch = target_for(s).pg(["pg_dump", "--format=custom"])
    kubectl = [sys.executable, str(FAKE), "--context", "prod-eu", "--namespace", "shop"]
    assert launch.argv == [
        *kubectl,
        "exec",
        "-i",
        "pg-0",
        "-c",
        "postgres",
        "--",
        "env",
        "PGUSER=app",
        "PGDATABASE=shop",
        "pg_dump",
        "--format=custom",
    ]
    [lookup] = fake_kubectl()
    assert lookup["argv"] == [
        "--context",
        "prod-eu",
        "--namespace",
        "shop",
        "get",
        "pods",
        "--selector",
        "app=db",
        "--field-selector=status.phase=Running",
        "--output=jsonpath={.items[*].metadata.name}",
    ]
    for argv in (launch.argv, lookup["argv"]):
        assert not any(SECRET in a for a in argv)
    assert not lookup["env_has_password"]
    assert SECRET not in json.dumps(launch.env)  # kubectl never holds the password
    assert "-t" not in launch.argv and "--tty" not in launch.argv  # binary dumps need no TTY


def test_agent_execs_into_the_backend_pod_with_its_own_secret(tmp_path, fake_kubectl):
    s = backend(tmp_path, fake_kubectl)
    launch = target_for(s).agent()
    assert launch.argv[2:] == [
        "--namespace",
        "default",
        "exec",
        "-i",
        "api-7f9c",
        "--",
        "env",
        "PYTHONPATH=/srv/dbops",
        "POSTGRES_DB=shop",
        "PGDATABASE=shop",
        *AGENT,
    ]
    assert SECRET not in " ".join(launch.argv) and SECRET not in json.dumps(launch.env)
    assert "backend pod app=backend" in target_for(s).describe()


def test_agent_gets_the_direct_address_as_compose_passes_it(tmp_path, fake_kubectl):
    """DBOPS_DIRECT_HOST/_PORT (PgBouncer in front, docs/pgbouncer.md) reach the agent in the
    backend pod on `env`'s argv, overriding the pod's POSTGRES_HOST/_PORT, as compose's `-e`."""
    s = backend(
        tmp_path, fake_kubectl, DBOPS_DIRECT_HOST="pg-direct.shop.svc", DBOPS_DIRECT_PORT="5433"
    )
    launch = target_for(s).agent()
    assert launch.argv[launch.argv.index("--") + 1 :] == [
        "env",
        "PYTHONPATH=/srv/dbops",
        "POSTGRES_DB=shop",
        "PGDATABASE=shop",
        "POSTGRES_HOST=pg-direct.shop.svc",
        "POSTGRES_PORT=5433",
        "DBOPS_DIRECT_HOST=pg-direct.shop.svc",
        "DBOPS_DIRECT_PORT=5433",
        *AGENT,
    ]
    assert SECRET not in " ".join(launch.argv) and SECRET not in json.dumps(launch.env)
    # The db pod's tools use its local socket, as compose's exec: no direct address there.
    assert not any(
        a.startswith(("POSTGRES_HOST=", "DBOPS_DIRECT")) for a in target_for(s).pg(["psql"]).argv
    )


def test_the_agent_in_the_pod_connects_to_the_direct_address(
    tmp_path, fake_kubectl, pg_cluster, invoke
):
    """Through the stand-in kubectl against real PostgreSQL: the backend pod's POSTGRES_PORT is
    a port nothing listens on (the "pooler" the application would use); with DBOPS_DIRECT_*
    the agent reaches the server, without them it cannot."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    path = f"{pg_cluster.bindir}:{Path(sys.executable).parent}:/usr/bin:/bin"
    fake_kubectl.pods.write_text(
        json.dumps(
            {
                "pods": {
                    "pg-0": {"labels": "app=db", "env": {"PATH": path}},
                    "api-7f9c": {
                        "labels": "app=backend",
                        "cwd": str(ALEMBIC_INI.parent),
                        "env": {
                            "PATH": path,
                            "POSTGRES_HOST": "127.0.0.1",
                            "POSTGRES_PORT": str(dead_port),
                            "POSTGRES_USER": pg_cluster.user,
                            "POSTGRES_PASSWORD": pg_cluster.password,
                        },
                    },
                }
            }
        )
    )
    env = through_pods(fake_kubectl)
    done = invoke("current", env=env)
    assert done.returncode == 1, done.stdout + done.stderr  # the pod's own address: nothing there
    done = invoke(
        "current",
        env={**env, "DBOPS_DIRECT_HOST": "127.0.0.1", "DBOPS_DIRECT_PORT": str(pg_cluster.port)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "current: base" in done.stdout
    [agent_exec] = [c for c in fake_kubectl() if "api-7f9c" in c["argv"]][-1:]
    assert f"DBOPS_DIRECT_PORT={pg_cluster.port}" in agent_exec["argv"]
    assert (
        pg_cluster.password not in " ".join(agent_exec["argv"])
        and not agent_exec["env_has_password"]
    )


def test_pods_are_looked_up_once_per_target(tmp_path, fake_kubectl):
    t = target_for(make(tmp_path, DBOPS_KUBECTL=fake_kubectl.kubectl))
    t.pg(["psql"]), t.pg(["pg_restore"]), t.agent(), t.agent()
    assert [c["argv"][2:5] for c in fake_kubectl()] == [["get", "pods", "--selector"]] * 2


def test_no_running_pod_is_one_clear_error(tmp_path, fake_kubectl):
    t = target_for(
        make(
            tmp_path,
            DBOPS_KUBECTL=fake_kubectl.kubectl,
            DBOPS_K8S_DB_SELECTOR="app=nope",
            DBOPS_K8S_NAMESPACE="shop",
        )
    )
    with pytest.raises(ConfigError) as err:
        t.pg(["psql"])
    assert (
        "no running pod matches DBOPS_K8S_DB_SELECTOR=app=nope in namespace shop"
        in err.value.message
    )


def test_missing_kubectl_is_one_clear_error(tmp_path):
    t = target_for(make(tmp_path, DBOPS_KUBECTL="/nonexistent/kubectl"))
    with pytest.raises(ConfigError) as err:
        t.ensure_available()
    assert "kubectl does not run" in err.value.message and "DBOPS_KUBECTL" in err.value.message


def test_migrate_through_the_kubernetes_target_against_real_postgresql(
    tmp_path, fake_kubectl, pg_cluster, db_conn, invoke
):
    """The whole migrate (agent in the 'backend pod', pg_dump streamed out of the 'db pod' over
    exec -i): backed up, at head, verified; the password only ever in the pods' environment."""
    bindir_path = f"{pg_cluster.bindir}:{Path(sys.executable).parent}:/usr/bin:/bin"
    secret_env = {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(pg_cluster.port),
        "POSTGRES_USER": pg_cluster.user,
        "POSTGRES_PASSWORD": pg_cluster.password,
    }
    fake_kubectl.pods.write_text(
        json.dumps(
            {
                "pods": {
                    "pg-0": {
                        "labels": "app=db",
                        "env": {
                            "PATH": bindir_path,
                            "PGHOST": "127.0.0.1",
                            "PGPORT": str(pg_cluster.port),
                            "PGPASSWORD": pg_cluster.password,
                        },
                    },
                    "api-7f9c": {
                        "labels": "app=backend",
                        "cwd": str(ALEMBIC_INI.parent),
                        "env": {**secret_env, "PATH": bindir_path},
                    },
                }
            }
        )
    )
    env = through_pods(fake_kubectl)
    done = invoke("migrate", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert version_rows(db_conn) == [SAMPLE_HEAD]
    assert "schema matches the models" in done.stdout
    backups = list((tmp_path / "backups").glob("*pre-migrate*.dump"))
    assert len(backups) == 1 and backups[0].read_bytes()[:5] == b"PGDMP"  # a custom-format dump
    calls = fake_kubectl()
    execs = [c for c in calls if "exec" in c["argv"]]
    assert {c["argv"][c["argv"].index("-i") + 1] for c in execs} == {"pg-0", "api-7f9c"}
    for c in calls:
        assert pg_cluster.password not in " ".join(c["argv"]) and not c["env_has_password"]
    assert pg_cluster.password not in done.stdout + done.stderr


def test_hints_up_and_down_on_kubernetes(tmp_path, fake_kubectl, pg_cluster, invoke):
    t = target_for(
        make(
            tmp_path,
            DBOPS_KUBECTL="kubectl",
            DBOPS_K8S_CONTEXT="prod",
            DBOPS_K8S_NAMESPACE="shop",
            DBOPS_K8S_DB_SELECTOR="app=pg",
        )
    )
    assert t.reach_hint() == "kubectl --context prod --namespace shop get pods --selector app=pg"
    assert (
        t.not_ready_hint()
        == "kubectl --context prod --namespace shop logs --selector app=pg --tail=50"
    )
    fake_kubectl.pods.write_text(
        json.dumps(
            {
                "pods": {
                    "pg-0": {
                        "labels": "app=db",
                        "env": {
                            "PATH": f"{pg_cluster.bindir}:/usr/bin:/bin",
                            "PGHOST": "127.0.0.1",
                            "PGPORT": str(pg_cluster.port),
                        },
                    }
                }
            }
        )
    )
    env = {"DBOPS_TARGET": "kubernetes", "DBOPS_KUBECTL": fake_kubectl.kubectl}
    done = invoke("up", env=env)  # nothing to start: pg_isready in the db pod answers
    assert done.returncode == 0, done.stderr
    assert any("pg_isready" in c["argv"] for c in fake_kubectl())
    done = invoke("down", env=env)
    assert done.returncode == 1 and "the pods are the cluster's to stop" in done.stderr
    done = invoke("up", "--build", env=env)
    assert done.returncode == 1 and "built and rolled out by your pipeline" in done.stderr


# --- the Job ------------------------------------------------------------------------------
def render(tmp_path, **env) -> tuple[str, dict]:
    s = make(
        tmp_path,
        DBOPS_K8S_IMAGE="registry.example/shop-dbops:1.4.2",
        DBOPS_K8S_NAMESPACE="shop",
        DBOPS_K8S_JOB_DEADLINE="900",
        **env,
    )
    text = k8s_job.render(s)
    return text, yaml.safe_load(text)


def test_rendered_job_validates_against_the_kubernetes_schema(tmp_path):
    text, job = render(tmp_path)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # raises on any violation
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 900
    assert "initContainers" not in pod and pod["restartPolicy"] == "Never"
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    [c] = pod["containers"]
    assert c["command"] == ["python", "-m", "invoke", "migrate"]
    assert c["envFrom"] == [{"secretRef": {"name": "dbops-db"}}]
    backups = next(v for v in pod["volumes"] if v["name"] == "backups")
    assert backups["persistentVolumeClaim"]["claimName"] == "dbops-backups"
    assert {"name": "backups", "mountPath": "/backups"} in c["volumeMounts"]
    assert {"name": "DBOPS_BACKUP_DIR", "value": "/backups"} in c["env"]
    assert {"name": "DBOPS_ALEMBIC_INI", "value": "/app/alembic.ini"} in c["env"]  # ops.Dockerfile
    assert c["workingDir"] == "/opt/dbops"
    assert SECRET not in text and "PASSWORD" not in json.dumps(c["env"])
    # issue 20: ENVIRONMENT is the Secret's (an env: entry would override production's)
    assert "ENVIRONMENT" not in {e["name"] for e in c["env"]}
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["ttlSecondsAfterFinished"] == 604800
    assert job["metadata"]["namespace"] == "shop"  # DBOPS_K8S_NAMESPACE was set
    # python is not PID 1 (the pause container is): the deadline's SIGTERM is delivered
    assert pod["shareProcessNamespace"] is True and pod["terminationGracePeriodSeconds"] >= 60


def test_production_environment_and_namespace_come_from_outside_the_manifest(tmp_path):
    s = make(tmp_path, DBOPS_K8S_IMAGE="x:1", ENVIRONMENT="development")
    job = yaml.safe_load(k8s_job.render(s))
    assert "namespace" not in job["metadata"]  # the context's, or Helm's release namespace
    assert "development" not in json.dumps(job)
    job = yaml.safe_load(k8s_job.render(s, namespace_flag="billing"))
    assert job["metadata"]["namespace"] == "billing"
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_resources_are_settable_and_a_bad_list_is_refused(tmp_path):
    s = make(
        tmp_path,
        DBOPS_K8S_IMAGE="x:1",
        DBOPS_K8S_REQUESTS="cpu=1,memory=2Gi",
        DBOPS_K8S_LIMITS="none",
    )
    [c] = yaml.safe_load(k8s_job.render(s))["spec"]["template"]["spec"]["containers"]
    assert c["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    bad = make(tmp_path, DBOPS_K8S_IMAGE="x:1", DBOPS_K8S_LIMITS="lots")
    with pytest.raises(ConfigError, match="DBOPS_K8S_LIMITS='lots': expected resource=quantity"):
        k8s_job.render(bad)


@pytest.mark.parametrize(("task", "cron"), [("backup", "0 3 * * *"), ("drill", "30 4 * * 0")])
def test_scheduled_backup_and_drill_render_a_valid_cronjob(tmp_path, task, cron):
    s = make(tmp_path, DBOPS_K8S_IMAGE="x:1", DBOPS_SCHEDULE_TIMEZONE="Europe/Berlin")
    text = k8s_job.render(s, task=task, schedule=cron)
    cj = yaml.safe_load(text)
    kubernetes_validate.validate(cj, K8S_VERSION, strict=True)
    assert cj["kind"] == "CronJob" and "annotations" not in cj["metadata"]  # not a hook
    spec = cj["spec"]
    assert spec["schedule"] == cron and spec["timeZone"] == "Europe/Berlin"
    assert spec["concurrencyPolicy"] == "Forbid" and spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["ttlSecondsAfterFinished"] > 0
    [c] = job["template"]["spec"]["containers"]
    assert c["command"][:4] == ["python", "-m", "invoke", task]


def test_a_job_runs_a_drill_and_a_cronjob_refuses_migrate_or_a_bad_cron(tmp_path):
    s = make(tmp_path, DBOPS_K8S_IMAGE="x:1")
    job = yaml.safe_load(k8s_job.render(s, task="drill"))
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    with pytest.raises(ConfigError, match="a CronJob runs backup or drill"):
        k8s_job.render(s, task="migrate", schedule="0 3 * * *")
    with pytest.raises(ConfigError, match="is not a cron schedule"):
        k8s_job.render(s, task="backup", schedule="*/5 * * * * *")
    with pytest.raises(ConfigError, match="is not a cron schedule"):
        k8s_job.render(s, task="backup", schedule="every day")


def test_a_broken_job_fails_the_schema_check(tmp_path):
    """The check is real: the same manifest with a wrong type is refused."""
    _, job = render(tmp_path)
    job["spec"]["backoffLimit"] = "zero"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_k8s_job_task_prints_the_manifest_and_refuses_without_image(invoke):
    done = invoke(
        "k8s-job", "--render", "--task", "migrate", env={"DBOPS_K8S_IMAGE": "registry.example/x:1"}
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["kind"] == "Job"
    done = invoke("k8s-job", "--render")
    assert done.returncode == 1 and done.stderr.startswith("error: DBOPS_K8S_IMAGE is not set")
    done = invoke("k8s-job", "--render", "--task", "restore", env={"DBOPS_K8S_IMAGE": "x"})
    assert done.returncode == 1 and "a Job runs one of" in done.stderr
    done = invoke(
        "k8s-job",
        "--render",
        "--task",
        "backup",
        "--schedule",
        "0 3 * * *",
        "--namespace",
        "shop",
        env={"DBOPS_K8S_IMAGE": "x"},
    )
    assert done.returncode == 0, done.stderr
    cj = yaml.safe_load(done.stdout)
    assert cj["kind"] == "CronJob" and cj["metadata"]["namespace"] == "shop"
    done = invoke("k8s-job")
    assert done.returncode == 1 and "needs --render" in done.stderr


def test_kubernetes_target_is_a_declared_choice(tmp_path):
    assert isinstance(target_for(make(tmp_path)), KubernetesTarget)
    with pytest.raises(ConfigError):
        make(tmp_path, DBOPS_TARGET="k8s")
