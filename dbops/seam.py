"""The one place that decides where a command runs.

Two kinds of command exist above this seam:
- ``pg(argv)``: a PostgreSQL client tool (pg_dump, pg_restore, psql, pg_isready) or a
  POSIX ``sh -c`` script using them, run next to the server: ``<compose> exec -T <db> …``,
  ``kubectl exec -i <db pod> -- …``, or locally with libpq's PG* variables pointing at the
  configured server;
- ``agent()``: the DB-side agent (``python -m dbops.agent``) run where alembic runs:
  ``<compose> run --rm -T <backend> …``, ``kubectl exec -i <backend pod> -- …``, or locally
  with the same argv.

Passwords travel in the environment (local) or in the compose file's environment
(compose), never on argv. Every command is printed, secrets masked, before it runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dbops import pgbin
from dbops.config import Settings, no_project_message
from dbops.errors import ConfigError, OpsError

AGENT_MOUNT = "/opt/dbops"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    cwd: Path | None
    secrets: tuple[str, ...] = field(repr=False, default=())
    quiet: bool = False  # DBOPS_QUIET from the settings: the "$ …" line is not printed

    @property
    def display(self) -> str:
        # A multi-line `sh -c` script is shown by its first comment line, not in full.
        text = shlex.join([_script_label(a) if "\n" in a else a for a in self.argv])
        for secret in self.secrets:
            text = text.replace(secret, "****")
        return text


def _script_label(script: str) -> str:
    first = next((ln.strip() for ln in script.splitlines() if ln.strip()), "")
    return (
        f"<script: {first.lstrip('# ')[:60]}…>"
        if first.startswith("#")
        else f"<{len(script.splitlines())}-line script>"
    )


def mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


def announce(launch: Launch) -> None:
    from dbops import events

    if events.json_mode():  # a JSON step event instead of the "$ …" line
        events.step("run", command=launch.display)
        return
    if not launch.quiet:
        print(f"$ {launch.display}", file=sys.stderr, flush=True)


def run(
    launch: Launch,
    *,
    input: bytes | None = None,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """Run to completion; the caller reads returncode (nothing is assumed)."""
    announce(launch)
    try:
        return subprocess.run(
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=capture,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise OpsError(f"cannot run {launch.argv[0]!r}: {exc.strerror}") from None


def host(argv: Sequence[str], cwd: Path | None = None, *, quiet: bool = False) -> Launch:
    """A command on this machine (a linter, a helper binary), not next to the server."""
    return Launch(list(argv), dict(os.environ), cwd, quiet=quiet)


def start(launch: Launch, **popen_kwargs) -> subprocess.Popen:
    announce(launch)
    try:
        return subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, **popen_kwargs)
    except FileNotFoundError as exc:
        raise OpsError(f"cannot run {launch.argv[0]!r}: {exc.strerror}") from None


class Target:
    name = "?"

    def __init__(self, settings: Settings):
        self.settings = settings

    def pg(self, argv: Sequence[str]) -> Launch:
        raise NotImplementedError

    def agent(self) -> Launch:
        raise NotImplementedError

    def ensure_available(self) -> None:
        """One clear line when this target cannot run anything."""

    def describe(self) -> str:
        raise NotImplementedError

    def up(self, build: bool = False) -> None:
        """Start what this target runs (if anything) and wait until the server answers."""
        raise NotImplementedError

    def down(self, volumes: bool = False) -> None:
        """Stop what this target runs; refuses when the server is not ours to stop."""
        raise NotImplementedError

    def reach_hint(self) -> str:
        """The command that shows (or makes) the database reachable, for "cannot connect"."""
        raise NotImplementedError

    def not_ready_hint(self) -> str:
        """Where to look when the server does not become ready."""
        return self.reach_hint()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until pg_isready answers next to the server (not the healthcheck, which some
        engines never run); host and port come from the target's PG* environment."""
        launch = self.pg(["pg_isready", "-q", "-t", "2"])
        deadline = time.monotonic() + timeout
        while run(launch).returncode != 0:
            if time.monotonic() > deadline:
                raise OpsError(
                    f"the database did not answer pg_isready within {timeout:.0f} s",
                    next_command=self.not_ready_hint(),
                )
            time.sleep(1)


class LocalTarget(Target):
    """The same argv, on this machine, against POSTGRES_HOST:POSTGRES_PORT."""

    name = "local"

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(connection_env(s))
        env["PATH"] = pgbin.path_with_bindir(s.pg_bindir, env.get("PATH", ""))
        return env

    def pg(self, argv: Sequence[str]) -> Launch:
        return Launch(
            list(argv),
            self._env(),
            None,
            tuple(self.settings.secrets()),
            quiet=self.settings.get("DBOPS_QUIET"),
        )

    def agent(self) -> Launch:
        s = self.settings
        env = self._env()
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")])
        )
        if s.alembic_ini is None:
            raise ConfigError(no_project_message(s))
        argv = [sys.executable, "-m", "dbops.agent", "--ini", str(s.alembic_ini)]
        env.update(agent_settings(s))
        if not s.alembic_ini.is_file():
            raise ConfigError(f"DBOPS_ALEMBIC_INI: {s.alembic_ini} does not exist")
        return Launch(
            argv, env, s.alembic_ini.parent, tuple(s.secrets()), quiet=s.get("DBOPS_QUIET")
        )

    def describe(self) -> str:
        s = self.settings
        return f"local ({s.user}@{s.host}:{s.port}/{s.database})"

    def up(self, build: bool = False) -> None:
        self.wait_ready(timeout=10)

    def down(self, volumes: bool = False) -> None:
        raise OpsError("DBOPS_TARGET=local: the server is not ours to stop")

    def reach_hint(self) -> str:
        return f"pg_isready -h {self.settings.host} -p {self.settings.port}"


class ComposeTarget(Target):
    """``<compose> exec -T <db> …`` for PostgreSQL tools, ``<compose> run --rm -T <backend> …``
    for the agent, which is mounted read-only from this checkout into the backend container."""

    name = "compose"
    _checked = False

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        # What compose interpolates into docker-compose.yml (.env values included).
        env.update(
            {"POSTGRES_USER": s.user, "POSTGRES_PASSWORD": s.password, "POSTGRES_DB": s.database}
        )
        return env

    def pg(self, argv: Sequence[str]) -> Launch:
        s = self.settings
        full = [
            *s.compose,
            "exec",
            "-T",
            "-e",
            f"PGUSER={s.user}",
            "-e",
            f"PGDATABASE={s.database}",
            s.db_service,
            *argv,
        ]
        return Launch(
            full, self._env(), s.project_dir, tuple(s.secrets()), quiet=s.get("DBOPS_QUIET")
        )

    def agent(self) -> Launch:
        s = self.settings
        direct = [
            a
            for k, v in {**direct_address(s), **agent_settings(s)}.items()
            for a in ("-e", f"{k}={v}")
        ]
        full = [
            *s.compose,
            "run",
            "--rm",
            "-T",
            "-v",
            f"{PACKAGE_DIR}:{AGENT_MOUNT}/dbops:ro",
            "-e",
            f"PYTHONPATH={AGENT_MOUNT}",
            *direct,
            s.backend_service,
            "python",
            "-m",
            "dbops.agent",
            "--ini",
            s.backend_alembic_ini,
        ]
        return Launch(
            full, self._env(), s.project_dir, tuple(s.secrets()), quiet=s.get("DBOPS_QUIET")
        )

    def compose(self, *args: str) -> Launch:
        s = self.settings
        return Launch(
            [*s.compose, *args],
            self._env(),
            s.project_dir,
            tuple(s.secrets()),
            quiet=s.get("DBOPS_QUIET"),
        )

    def ensure_available(self) -> None:
        if ComposeTarget._checked:
            return
        launch = self.compose("ps", "-q")
        why = _fails(launch.argv, launch.env, launch.cwd)
        if why is not None:
            raise ConfigError(self._unavailable(why))
        ComposeTarget._checked = True

    def _unavailable(self, why: str) -> str:
        """Why compose did not answer, as what it is: a refused compose file or .env (compose
        itself ran: `config -q` fails too, without any engine) or no engine answering."""
        compose = " ".join(self.settings.compose)
        check = self.compose("config", "-q")
        refused = None if "command not found" in why else _fails(check.argv, check.env, check.cwd)
        if refused is not None:
            hint = (
                " (a host folder such as DBOPS_BACKUP_DIR must start with ./ or /: compose reads "
                "a bare name as a named volume)"
                if "named volume" in refused.lower()
                else ""
            )
            return (
                f"compose refuses the project in {self.settings.project_dir}: {refused}{hint}; "
                f"fix docker-compose.yml or .env, check with: {compose} config -q"
            )
        return (
            f"DBOPS_TARGET=compose but no container engine answers to '{compose}' ({why}); "
            "start the engine, set DBOPS_COMPOSE, or use DBOPS_TARGET=local"
        )

    def up(self, build: bool = False) -> None:
        s = self.settings
        self.ensure_available()
        if build and run(self.compose("build", s.backend_service), capture=False).returncode != 0:
            raise OpsError(
                f"compose could not build the {s.backend_service} image (its output is above)"
            )
        if run(self.compose("up", "-d", s.db_service), capture=False).returncode != 0:
            raise OpsError("compose could not start the db service (its output is above)")
        self.wait_ready()

    def down(self, volumes: bool = False) -> None:
        self.ensure_available()
        if run(self.compose("down", *(["-v"] if volumes else [])), capture=False).returncode != 0:
            raise OpsError("compose down failed (its output is above)")

    def reach_hint(self) -> str:
        return "invoke up"

    def not_ready_hint(self) -> str:
        return f"{' '.join(self.settings.compose)} logs {self.settings.db_service}"

    def describe(self) -> str:
        s = self.settings
        return (
            f"compose ({' '.join(s.compose)}; db service '{s.db_service}', backend service "
            f"'{s.backend_service}', database {s.database})"
        )


class KubernetesTarget(Target):
    """``kubectl exec -i <pod> -- …`` in DBOPS_K8S_NAMESPACE (and DBOPS_K8S_CONTEXT): PostgreSQL
    tools in the running pod matching DBOPS_K8S_DB_SELECTOR (over the pod's local socket, as
    compose's exec), the agent in the pod matching DBOPS_K8S_BACKEND_SELECTOR, where dbops/ is
    at DBOPS_K8S_AGENT_PATH and the password is already in the pod's environment from its
    Secret. No password is handed to kubectl: not on argv, not in its environment."""

    name = "kubernetes"
    ROLES = {
        "db": ("DBOPS_K8S_DB_SELECTOR", "DBOPS_K8S_DB_CONTAINER"),
        "backend": ("DBOPS_K8S_BACKEND_SELECTOR", "DBOPS_K8S_BACKEND_CONTAINER"),
    }

    def __init__(self, settings: Settings, pods: dict[str, str] | None = None):
        super().__init__(settings)
        self._pods = dict(pods or {})

    def _env(self) -> dict[str, str]:
        return {
            k: v
            for k, v in os.environ.items()
            if k not in ("PGPASSWORD", "POSTGRES_PASSWORD", "DATABASE_URL")
        }

    def kubectl(self, *args: str) -> list[str]:
        s = self.settings
        context = s.get("DBOPS_K8S_CONTEXT")
        return [
            *s.get("DBOPS_KUBECTL"),
            *(["--context", context] if context else []),
            "--namespace",
            s.get("DBOPS_K8S_NAMESPACE"),
            *args,
        ]

    def pod(self, role: str) -> str:
        """The first running pod (by name) matching the role's selector; looked up once."""
        if role not in self._pods:
            selector_key = self.ROLES[role][0]
            selector = self.settings.get(selector_key)
            done = run(
                Launch(
                    self.kubectl(
                        "get",
                        "pods",
                        "--selector",
                        selector,
                        "--field-selector=status.phase=Running",
                        "--output=jsonpath={.items[*].metadata.name}",
                    ),
                    self._env(),
                    None,
                    quiet=self.settings.get("DBOPS_QUIET"),
                ),
                timeout=60,
            )
            names = (
                sorted(done.stdout.decode(errors="replace").split()) if done.returncode == 0 else []
            )
            if not names:
                why = _first_line(done.stderr) if done.returncode else "none is Running"
                raise ConfigError(
                    f"DBOPS_TARGET=kubernetes: no running pod matches {selector_key}={selector} in "
                    f"namespace {self.settings.get('DBOPS_K8S_NAMESPACE')} ({why}); check "
                    f"{selector_key}, DBOPS_K8S_NAMESPACE and DBOPS_K8S_CONTEXT "
                    f"(kubectl get pods --show-labels)"
                )
            self._pods[role] = names[0]
        return self._pods[role]

    def exec(self, role: str, argv: Sequence[str]) -> Launch:
        container = self.settings.get(self.ROLES[role][1])
        full = self.kubectl(
            "exec", "-i", self.pod(role), *(["-c", container] if container else []), "--", *argv
        )
        return Launch(
            full,
            self._env(),
            None,
            tuple(self.settings.secrets()),
            quiet=self.settings.get("DBOPS_QUIET"),
        )

    def pg(self, argv: Sequence[str]) -> Launch:
        s = self.settings
        return self.exec("db", ["env", f"PGUSER={s.user}", f"PGDATABASE={s.database}", *argv])

    def agent(self) -> Launch:
        s = self.settings
        # DBOPS_DIRECT_HOST/_PORT (a pooler in front of the server) as compose's `-e`: the host
        # and port override the pod's POSTGRES_HOST/_PORT for the agent alone; no secret here.
        direct = [f"{k}={v}" for k, v in direct_address(s).items()]
        return self.exec(
            "backend",
            [
                "env",
                f"PYTHONPATH={s.get('DBOPS_K8S_AGENT_PATH')}",
                f"POSTGRES_DB={s.database}",
                f"PGDATABASE={s.database}",
                *direct,
                "python",
                "-m",
                "dbops.agent",
                "--ini",
                s.backend_alembic_ini,
            ],
        )

    def ensure_available(self) -> None:
        why = _fails([*self.settings.get("DBOPS_KUBECTL"), "version", "--client"], self._env())
        if why is not None:
            raise ConfigError(
                f"DBOPS_TARGET=kubernetes but kubectl does not run ({why}); install "
                f"it or set DBOPS_KUBECTL"
            )

    def up(self, build: bool = False) -> None:
        """The pods are the cluster's: nothing to start, only wait until the server answers."""
        if build:
            raise OpsError(
                "DBOPS_TARGET=kubernetes: images are built and rolled out by your "
                "pipeline, not by invoke up --build",
                next_command="invoke up",
            )
        self.ensure_available()
        self.wait_ready(timeout=60)

    def down(self, volumes: bool = False) -> None:
        raise OpsError(
            "DBOPS_TARGET=kubernetes: the pods are the cluster's to stop, not ours",
            next_command=shlex.join(
                self.kubectl(
                    "get", "pods", "--selector", self.settings.get("DBOPS_K8S_DB_SELECTOR")
                )
            ),
        )

    def reach_hint(self) -> str:
        return shlex.join(
            self.kubectl("get", "pods", "--selector", self.settings.get("DBOPS_K8S_DB_SELECTOR"))
        )

    def not_ready_hint(self) -> str:
        return shlex.join(
            self.kubectl(
                "logs", "--selector", self.settings.get("DBOPS_K8S_DB_SELECTOR"), "--tail=50"
            )
        )

    def describe(self) -> str:
        s = self.settings
        ctx = s.get("DBOPS_K8S_CONTEXT") or "current context"
        return (
            f"kubernetes ({ctx}, namespace {s.get('DBOPS_K8S_NAMESPACE')}; db pod "
            f"{s.get('DBOPS_K8S_DB_SELECTOR')}, backend pod {s.get('DBOPS_K8S_BACKEND_SELECTOR')}, "
            f"database {s.database})"
        )


def direct_address(s: Settings) -> dict[str, str]:
    """DBOPS_DIRECT_HOST/_PORT: the server itself when POSTGRES_HOST is a pooler (PgBouncer in
    transaction mode). Every dbops connection goes there; the application keeps POSTGRES_HOST."""
    host = s.get("DBOPS_DIRECT_HOST")
    if not host:
        return {}
    port = str(s.get("DBOPS_DIRECT_PORT"))
    return {
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": port,
        "DBOPS_DIRECT_HOST": host,
        "DBOPS_DIRECT_PORT": port,
    }


def agent_settings(s: Settings) -> dict[str, str]:
    """Settings the agent reads from its environment (it never reads .env), passed explicitly
    from Settings (so a .env value counts): the models check's ignore list, whether alembic's
    own log lines are kept (DBOPS_VERBOSE) and the version table (DBOPS_VERSION_TABLE)."""
    passed = {
        "DBOPS_VERBOSE": "1" if s.get("DBOPS_VERBOSE") else "0",
        "DBOPS_VERSION_TABLE": s.get("DBOPS_VERSION_TABLE"),
    }
    ignore = (s.get("DBOPS_MODELS_IGNORE") or "").strip()
    return {**passed, "DBOPS_MODELS_IGNORE": ignore} if ignore else passed


def connection_env(s: Settings) -> dict[str, str]:
    """libpq's variables plus the POSTGRES_*/DATABASE_URL an env.py may read. The URL is
    percent-encoded with the stdlib (what SQLAlchemy's make_url decodes): importing
    sqlalchemy here cost every task ~0.16 s of start-up."""
    from urllib.parse import quote

    direct = direct_address(s)
    host, port = direct.get("POSTGRES_HOST", s.host), int(direct.get("POSTGRES_PORT", s.port))
    auth = quote(s.user, safe="") + (":" + quote(s.password, safe="") if s.password else "")
    db = quote(s.database, safe="")
    if host.startswith("/"):  # a unix-socket folder: libpq's host= in the query
        url = f"postgresql+psycopg://{auth}@/{db}?host={quote(host, safe='/')}&port={port}"
    else:
        bracketed = f"[{host}]" if ":" in host else host
        url = f"postgresql+psycopg://{auth}@{bracketed}:{port}/{db}"
    env = {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": s.user,
        "PGDATABASE": s.database,
        "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "5"),
        "POSTGRES_HOST": host,
        "POSTGRES_PORT": str(port),
        "POSTGRES_USER": s.user,
        "POSTGRES_DB": s.database,
        "DATABASE_URL": url,
        **{k: v for k, v in direct.items() if k.startswith("DBOPS_")},
    }
    if s.password:
        env["PGPASSWORD"] = s.password
        env["POSTGRES_PASSWORD"] = s.password
    return env


def _fails(
    argv: Sequence[str], env: dict[str, str], cwd: Path | str | None = None, timeout: int = 30
) -> str | None:
    """None when ``argv`` runs and exits 0 within ``timeout`` seconds (a quiet probe: nothing
    printed); else why not, in a few words."""
    try:
        done = subprocess.run(
            list(argv),
            env=env,
            cwd=cwd,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except FileNotFoundError:
        return f"{argv[0]}: command not found"
    except subprocess.TimeoutExpired:
        return f"no answer within {timeout} s"
    return None if done.returncode == 0 else _first_line(done.stderr)


def _first_line(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    lines = [ln.strip() for ln in (data or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def target_for(settings: Settings) -> Target:
    return {"local": LocalTarget, "compose": ComposeTarget, "kubernetes": KubernetesTarget}[
        settings.target
    ](settings)
