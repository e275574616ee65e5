"""The one place that decides where a command runs.

Two kinds of command exist above this seam:
- ``pg(argv)``: a PostgreSQL client tool (pg_dump, pg_restore, psql, pg_isready) or a
  POSIX ``sh -c`` script using them, run next to the server: ``<compose> exec -T <db> …``
  or locally with libpq's PG* variables pointing at the configured server;
- ``agent()``: the DB-side agent (``python -m dbops.agent``) run where alembic runs:
  ``<compose> run --rm -T <backend> …`` or locally with the same argv.

Passwords travel in the environment (local) or in the compose file's environment
(compose), never on argv. Every command is printed, secrets masked, before it runs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dbops import pgbin
from dbops.config import Settings
from dbops.errors import ConfigError, OpsError

AGENT_MOUNT = "/opt/dbops"
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    cwd: Path | None
    secrets: tuple[str, ...] = field(repr=False, default=())

    @property
    def display(self) -> str:
        # A multi-line `sh -c` script is shown by its first comment line, not in full.
        text = shlex.join([_script_label(a) if "\n" in a else a for a in self.argv])
        for secret in self.secrets:
            text = text.replace(secret, "****")
        return text


def _script_label(script: str) -> str:
    first = next((ln.strip() for ln in script.splitlines() if ln.strip()), "")
    return f"<script: {first.lstrip('# ')[:60]}…>" if first.startswith("#") else f"<{len(script.splitlines())}-line script>"


def mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


def announce(launch: Launch) -> None:
    if os.environ.get("DBOPS_QUIET") != "1":
        print(f"$ {launch.display}", file=sys.stderr, flush=True)


def run(launch: Launch, *, input: bytes | None = None, capture: bool = True,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run to completion; the caller reads returncode (nothing is assumed)."""
    announce(launch)
    try:
        return subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL,
                              capture_output=capture, timeout=timeout)
    except FileNotFoundError as exc:
        raise OpsError(f"cannot run {launch.argv[0]!r}: {exc.strerror}") from None


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
        return Launch(list(argv), self._env(), None, tuple(self.settings.secrets()))

    def agent(self) -> Launch:
        s = self.settings
        env = self._env()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "dbops.agent", "--ini", str(s.alembic_ini)]
        if not s.alembic_ini.is_file():
            raise ConfigError(f"DBOPS_ALEMBIC_INI: {s.alembic_ini} does not exist")
        return Launch(argv, env, s.alembic_ini.parent, tuple(s.secrets()))

    def describe(self) -> str:
        s = self.settings
        return f"local ({s.user}@{s.host}:{s.port}/{s.database})"


class ComposeTarget(Target):
    """``<compose> exec -T <db> …`` for PostgreSQL tools, ``<compose> run --rm -T <backend> …``
    for the agent, which is mounted read-only from this checkout into the backend container."""

    name = "compose"
    _checked = False

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        # What compose interpolates into docker-compose.yml (.env values included).
        env.update({"POSTGRES_USER": s.user, "POSTGRES_PASSWORD": s.password,
                    "POSTGRES_DB": s.database})
        return env

    def pg(self, argv: Sequence[str]) -> Launch:
        s = self.settings
        full = [*s.compose, "exec", "-T", "-e", f"PGUSER={s.user}", "-e", f"PGDATABASE={s.database}",
                s.db_service, *argv]
        return Launch(full, self._env(), s.project_dir, tuple(s.secrets()))

    def agent(self) -> Launch:
        s = self.settings
        full = [*s.compose, "run", "--rm", "-T",
                "-v", f"{PACKAGE_DIR}:{AGENT_MOUNT}/dbops:ro", "-e", f"PYTHONPATH={AGENT_MOUNT}",
                s.backend_service, "python", "-m", "dbops.agent", "--ini", s.backend_alembic_ini]
        return Launch(full, self._env(), s.project_dir, tuple(s.secrets()))

    def compose(self, *args: str) -> Launch:
        s = self.settings
        return Launch([*s.compose, *args], self._env(), s.project_dir, tuple(s.secrets()))

    def ensure_available(self) -> None:
        if ComposeTarget._checked:
            return
        launch = self.compose("ps", "-q")
        try:
            done = subprocess.run(launch.argv, env=launch.env, cwd=launch.cwd, capture_output=True,
                                  stdin=subprocess.DEVNULL, timeout=30)
            ok, why = done.returncode == 0, _first_line(done.stderr)
        except FileNotFoundError:
            ok, why = False, f"{self.settings.compose[0]}: command not found"
        except subprocess.TimeoutExpired:
            ok, why = False, "no answer within 30 s"
        if not ok:
            raise ConfigError(
                f"DBOPS_TARGET=compose but no container engine answers to "
                f"'{' '.join(self.settings.compose)}' ({why}); start the engine, set DBOPS_COMPOSE, "
                f"or use DBOPS_TARGET=local")
        ComposeTarget._checked = True

    def describe(self) -> str:
        s = self.settings
        return f"compose ({' '.join(s.compose)}; db service '{s.db_service}', backend service '{s.backend_service}', database {s.database})"


def connection_env(s: Settings) -> dict[str, str]:
    """libpq's variables plus the POSTGRES_*/DATABASE_URL an env.py may read."""
    from sqlalchemy.engine import URL

    url = URL.create("postgresql+psycopg", username=s.user, password=s.password or None,
                     host=s.host, port=s.port, database=s.database)
    env = {
        "PGHOST": s.host, "PGPORT": str(s.port), "PGUSER": s.user, "PGDATABASE": s.database,
        "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "5"),
        "POSTGRES_HOST": s.host, "POSTGRES_PORT": str(s.port), "POSTGRES_USER": s.user,
        "POSTGRES_DB": s.database, "DATABASE_URL": url.render_as_string(hide_password=False),
    }
    if s.password:
        env["PGPASSWORD"] = s.password
        env["POSTGRES_PASSWORD"] = s.password
    return env


def _first_line(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    lines = [ln.strip() for ln in (data or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def target_for(settings: Settings) -> Target:
    return {"local": LocalTarget, "compose": ComposeTarget}[settings.target](settings)
