"""Settings: defaults < invoke config (``dbops:`` section) < .env < process environment.

Every name is documented in .env.example. Nothing here knows about the sample
backend: paths, service names and credentials all come from configuration.
"""

from __future__ import annotations

import getpass
import os
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from dbops.errors import ConfigError

TARGETS = ("compose", "local")

DEFAULTS: dict[str, str] = {
    "DBOPS_TARGET": "compose",
    "DBOPS_COMPOSE": "docker compose",
    "DBOPS_DB_SERVICE": "db",
    "DBOPS_BACKEND_SERVICE": "backend",
    "DBOPS_ALEMBIC_INI": "backend/alembic.ini",
    "DBOPS_BACKEND_ALEMBIC_INI": "alembic.ini",
    "DBOPS_BACKUP_DIR": "backups",
    "DBOPS_MAINTENANCE_DB": "postgres",
    "DBOPS_LOCK_TIMEOUT": "2s",
    "DBOPS_STATEMENT_TIMEOUT": "0",
    "DBOPS_LOCK_RETRIES": "5",
    "DBOPS_PG_BINDIR": "",
    "POSTGRES_HOST": "127.0.0.1",
    "POSTGRES_PORT": "5432",
    "POSTGRES_PASSWORD": "",
    "ENVIRONMENT": "development",
}
REQUIRED = ("POSTGRES_USER", "POSTGRES_DB")


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    target: str
    compose: tuple[str, ...]
    db_service: str
    backend_service: str
    alembic_ini: Path
    backend_alembic_ini: str
    backup_dir: Path
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str
    maintenance_db: str
    lock_timeout: str
    statement_timeout: str
    lock_retries: int
    pg_bindir: str
    environment: str
    raw: dict[str, str] = field(repr=False, default_factory=dict)

    def value(self, key: str, default: str = "") -> str:
        """An optional setting (DBOPS_BACKUP_*, DBOPS_SQUAWK_*, …): raw holds every DBOPS_*
        from invoke config, .env and the environment, already layered."""
        return (self.raw.get(key) or default).strip()

    @property
    def audit_log(self) -> Path:
        return Path(self.raw.get("DBOPS_AUDIT_LOG") or self.backup_dir / "audit.jsonl")

    @property
    def is_production(self) -> bool:
        return self.environment.lower() in ("production", "prod")

    def secrets(self) -> list[str]:
        """Values that must never be printed."""
        return [s for s in (self.password,) if s]

    def with_database(self, database: str) -> Settings:
        from dataclasses import replace
        return replace(self, database=database)


def operator() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def load_settings(project_dir: Path | str, invoke_config: dict | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    project_dir = Path(project_dir).resolve()
    environ = dict(os.environ if environ is None else environ)
    env_file = Path(environ.get("DBOPS_ENV_FILE") or project_dir / ".env")
    values: dict[str, str] = dict(DEFAULTS)
    for key, value in (invoke_config or {}).items():
        if value is not None:
            values[key.upper()] = str(value)
    if env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update({k: v for k, v in environ.items() if k in DEFAULTS or k in REQUIRED
                   or k.startswith(("DBOPS_", "POSTGRES_"))})

    for key in REQUIRED:
        if not values.get(key):
            raise ConfigError(f"{key} is not set: add it to .env (see .env.example) or the environment")
    target = values["DBOPS_TARGET"].strip().lower()
    if target not in TARGETS:
        raise ConfigError(f"DBOPS_TARGET={values['DBOPS_TARGET']!r} is not one of: {', '.join(TARGETS)}")
    try:
        port = int(values["POSTGRES_PORT"])
        retries = int(values["DBOPS_LOCK_RETRIES"])
    except ValueError as exc:
        raise ConfigError(f"POSTGRES_PORT and DBOPS_LOCK_RETRIES must be integers ({exc})") from None
    compose = tuple(shlex.split(values["DBOPS_COMPOSE"]))
    if not compose:
        raise ConfigError("DBOPS_COMPOSE is empty: set it to 'docker compose', 'docker-compose' or 'podman-compose'")

    def path(key: str) -> Path:
        p = Path(values[key]).expanduser()
        return p if p.is_absolute() else project_dir / p

    return Settings(
        project_dir=project_dir,
        target=target,
        compose=compose,
        db_service=values["DBOPS_DB_SERVICE"],
        backend_service=values["DBOPS_BACKEND_SERVICE"],
        alembic_ini=path("DBOPS_ALEMBIC_INI"),
        backend_alembic_ini=values["DBOPS_BACKEND_ALEMBIC_INI"],
        backup_dir=path("DBOPS_BACKUP_DIR"),
        host=values["POSTGRES_HOST"],
        port=port,
        user=values["POSTGRES_USER"],
        password=values.get("POSTGRES_PASSWORD", ""),
        database=values["POSTGRES_DB"],
        maintenance_db=values["DBOPS_MAINTENANCE_DB"],
        lock_timeout=values["DBOPS_LOCK_TIMEOUT"],
        statement_timeout=values["DBOPS_STATEMENT_TIMEOUT"],
        lock_retries=retries,
        pg_bindir=values["DBOPS_PG_BINDIR"],
        environment=values["ENVIRONMENT"],
        raw=values,
    )
