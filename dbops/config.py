"""Settings: defaults < invoke config (``dbops:`` section) < .env < process environment.

Every setting is declared once in ``SETTINGS`` (name, type, default, meaning), the way
invoke casts a value to its default's type: ``load_settings`` parses and validates every
one of them before any task touches anything, so a bad value is one ``error:`` line naming
the setting. Code reads a typed value with ``settings.get(NAME)``. .env.example documents
every declared name (tests/test_compose_file.py checks it). Nothing here knows about the
sample backend: paths, service names and credentials all come from configuration.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from dbops.errors import ConfigError


# --- value types: each parses a string or raises ValueError saying what it expects ---
def _text(raw: str) -> str:
    return raw.strip()


def _required(raw: str) -> str:
    if not raw.strip():
        raise ValueError("is not set")
    return raw.strip()


def _whole(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            n = int(raw.strip())
        except ValueError:
            raise ValueError("is not a whole number") from None
        if n < minimum or (maximum is not None and n > maximum):
            raise ValueError(
                f"must be between {minimum} and {maximum}"
                if maximum is not None
                else f"must be {minimum} or more"
            )
        return n

    parse.__doc__ = "a whole number"
    return parse


def _number(raw: str) -> float:
    try:
        n = float(raw.strip())
    except ValueError:
        raise ValueError("is not a number") from None
    if n < 0:
        raise ValueError("must be 0 or more")
    return n


def _flag(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "on", "yes", "true"):
        return True
    if v in ("0", "off", "no", "false", ""):
        return False
    raise ValueError("is not on/off (1/0, yes/no, true/false)")


DURATION = re.compile(r"\d+(\.\d+)?\s*(us|ms|s|min|h|d)?")


def _duration(raw: str) -> str:
    """A PostgreSQL duration as lock_timeout takes it: 0, 500ms, 2s, 5min, 1h."""
    v = raw.strip()
    if not DURATION.fullmatch(v):
        raise ValueError("is not a duration such as 0, 500ms, 2s, 5min or 1h")
    return v


COMPRESSION = re.compile(r"auto|[0-9]|(gzip|lz4|zstd|none)(:[a-z0-9=,_-]+)?")


def _compression(raw: str) -> str:
    """pg_dump -Z: auto, 0-9, none, or a spec such as gzip:1, lz4, zstd:3."""
    v = raw.strip().lower()
    v = "0" if v == "none" else v
    if not COMPRESSION.fullmatch(v):
        raise ValueError("is not auto, 0-9, none, or a pg_dump -Z spec such as gzip:1, lz4, zstd:3")
    return v


COMPRESSION_TYPE = _compression  # also parses --compression flags


def _fast_or_compression(raw: str) -> str:
    v = raw.strip().lower()
    if v == "fast":
        return v
    try:
        return _compression(v)
    except ValueError:
        raise ValueError(
            "is not fast, auto, 0-9, none, or a pg_dump -Z spec such as zstd:3"
        ) from None


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        v = raw.strip().lower()
        if v not in allowed:
            raise ValueError(f"is not one of: {', '.join(allowed)}")
        return v

    return parse


def _argv(raw: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(raw))
    except ValueError as exc:
        raise ValueError(f"is not a command line ({exc})") from None
    if not argv:
        raise ValueError(
            "is empty: set it to 'docker compose', 'docker-compose' or 'podman-compose'"
        )
    return argv


def _cron(raw: str) -> str:
    """A cron schedule (5 fields: minute hour day month weekday; a 6th leading field adds
    seconds), or off."""
    v = " ".join(raw.split())
    if v.lower() in ("off", "none", "never"):
        return "off"
    from dbops.ops.schedule import cron_trigger  # APScheduler parses it (host side only)

    try:
        cron_trigger(v)
    except ValueError as exc:
        raise ValueError(f"is not a cron schedule such as '0 3 * * *' or off ({exc})") from None
    return v


def _names(raw: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in raw.split(",") if x.strip())


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: str | None  # None: no default (optional; get() returns None when unset)
    meaning: str


def _path(raw: str) -> Path:
    """A path; relative paths are taken from the project directory."""
    if not raw.strip():
        raise ValueError("is empty")
    return Path(raw.strip()).expanduser()


TARGETS = ("compose", "local", "kubernetes")

SETTINGS: tuple[Setting, ...] = (
    # --- the database ---
    Setting("POSTGRES_USER", _required, None, "database role dbops connects as"),
    Setting("POSTGRES_DB", _required, None, "the application database"),
    Setting("POSTGRES_PASSWORD", _text, "", "the role's password (never printed)"),
    Setting("POSTGRES_HOST", _text, "127.0.0.1", "server host as seen from where the tools run"),
    Setting("POSTGRES_PORT", _whole(1, 65535), "5432", "server port"),
    Setting(
        "ENVIRONMENT",
        _text,
        "development",
        "production: destructive tasks need --yes without a terminal",
    ),
    # --- where commands run ---
    Setting(
        "DBOPS_TARGET",
        _choice(*TARGETS),
        "compose",
        "compose (containers), local (this machine) or kubernetes (kubectl exec into pods)",
    ),
    Setting("DBOPS_COMPOSE", _argv, "docker compose", "the compose command"),
    Setting("DBOPS_DB_SERVICE", _required, "db", "compose service running PostgreSQL"),
    Setting("DBOPS_BACKEND_SERVICE", _required, "backend", "compose service where alembic runs"),
    Setting(
        "DBOPS_ALEMBIC_INI",
        _path,
        None,
        "alembic.ini on this machine (unset: found from the working directory upward)",
    ),
    Setting(
        "DBOPS_BACKEND_ALEMBIC_INI",
        _required,
        "alembic.ini",
        "alembic.ini inside the backend container",
    ),
    Setting(
        "DBOPS_PG_BINDIR",
        _text,
        "",
        "PostgreSQL binaries for the local target (default: pg_config --bindir)",
    ),
    Setting(
        "DBOPS_MAINTENANCE_DB",
        _required,
        "postgres",
        "database for the advisory lock and scratch databases",
    ),
    Setting(
        "DBOPS_DIRECT_HOST",
        _text,
        "",
        "the server itself when POSTGRES_HOST is a transaction/statement "
        "pooler (PgBouncer): every dbops connection goes there",
    ),
    Setting("DBOPS_DIRECT_PORT", _whole(1, 65535), "5432", "port of DBOPS_DIRECT_HOST"),
    Setting(
        "DBOPS_PG_CACHE",
        _text,
        "",
        "test matrix: PostgreSQL majors from registries (default "
        "/var/cache/dbops/pg as root, else ~/.cache/dbops/pg)",
    ),
    Setting("DBOPS_ENV_FILE", _path, ".env", "the .env file read (set in the environment)"),
    Setting("DBOPS_QUIET", _flag, "0", "do not print the commands run"),
    Setting("DBOPS_VERBOSE", _flag, "0", "keep alembic's own log lines in the output"),
    # --- backups ---
    Setting("DBOPS_BACKUP_DIR", _path, "backups", "backup folder (created 0700)"),
    Setting(
        "DBOPS_AUDIT_LOG",
        _path,
        None,
        "audit record, one JSON line per change (default: BACKUP_DIR/audit.jsonl)",
    ),
    Setting(
        "DBOPS_BACKUP_COMPRESSION",
        _compression,
        "auto",
        "pg_dump -Z (auto: gzip 1, zstd:1 on pg_dump 16+)",
    ),
    Setting(
        "DBOPS_BACKUP_RESERVE_MB",
        _number,
        "64",
        "free space kept beyond the expected dump size (MB)",
    ),
    Setting("DBOPS_BACKUP_LOCK_WAIT", _duration, "60s", "how long pg_dump waits for a table lock"),
    Setting("DBOPS_BACKUP_RETENTION", _flag, "on", "apply retention after each successful backup"),
    Setting("DBOPS_BACKUP_KEEP_LAST", _whole(0), "10", "retention: newest backups kept"),
    Setting("DBOPS_BACKUP_KEEP_DAILY", _whole(0), "7", "retention: one per day for this many days"),
    Setting(
        "DBOPS_BACKUP_KEEP_WEEKLY", _whole(0), "4", "retention: one per week for this many weeks"
    ),
    Setting("DBOPS_RESTORE_JOBS", _whole(1), "1", "pg_restore workers"),
    Setting(
        "DBOPS_RESTORE_PRE_BACKUP_COMPRESSION",
        _fast_or_compression,
        "fast",
        "compression of restore --pre-backup's dump (fast: uncompressed when there is room)",
    ),
    Setting(
        "DBOPS_PREMIGRATE_BACKUP",
        _choice("auto", "full", "touched", "none"),
        "auto",
        "pre-migrate backup: full, touched (schema + the tables the revisions write), none; "
        "auto: full up to DBOPS_PREMIGRATE_FULL_MAX_MB, else touched",
    ),
    Setting(
        "DBOPS_PREMIGRATE_FULL_MAX_MB",
        _number,
        "100",
        "auto: the largest expected full dump (MB; last full backup's size, else half the "
        "database) still taken in full before a migrate (~2 s of pg_dump here)",
    ),
    # --- migrations ---
    Setting("DBOPS_LOCK_TIMEOUT", _duration, "2s", "lock_timeout on every migration connection"),
    Setting(
        "DBOPS_STATEMENT_TIMEOUT", _duration, "0", "statement_timeout on every migration connection"
    ),
    Setting("DBOPS_LOCK_RETRIES", _whole(0), "5", "retries of a migration that hit lock_timeout"),
    Setting(
        "DBOPS_LOCK_RETRY_WAIT",
        _number,
        "1",
        "first backoff between lock-timeout retries (seconds)",
    ),
    Setting(
        "DBOPS_REHEARSE",
        _choice("never", "always"),
        "never",
        "always: migrate rehearses the pending revisions on a restored "
        "copy first (invoke rehearse)",
    ),
    Setting(
        "DBOPS_MAX_BLOCK_READS",
        _duration,
        "1s",
        "production: migrate refuses a rehearsed revision that blocks reads longer (--accept-risk)",
    ),
    Setting(
        "DBOPS_MAX_BLOCK_WRITES",
        _duration,
        "5s",
        "production: migrate refuses a rehearsed revision that blocks "
        "writes longer (--accept-risk)",
    ),
    Setting(
        "DBOPS_MAX_REWRITE_MB",
        _number,
        "1024",
        "production: migrate refuses a rehearsed revision that rewrites more (MB; --accept-risk)",
    ),
    Setting(
        "DBOPS_SQUAWK",
        _text,
        "",
        "squawk binary for invoke check (default: beside python, then PATH)",
    ),
    Setting(
        "DBOPS_MODELS_IGNORE",
        _text,
        "",
        "objects the database has on purpose, left out of the models check "
        "(KIND:NAME or NAME, comma-separated; * globs)",
    ),
    Setting(
        "DBOPS_SQUAWK_ACCEPT",
        _path,
        "squawk-accept.toml",
        "accepted squawk findings, each with a reason",
    ),
    Setting(
        "DBOPS_SQUAWK_EXCLUDE",
        _text,
        "prefer-bigint-over-int,prefer-bigint-over-smallint,prefer-identity,prefer-text-field",
        "squawk rules not run (style rules, not locking or safety)",
    ),
    Setting(
        "DBOPS_SQUAWK_CONFIG",
        _path,
        None,
        "squawk's own config (default: beside alembic.ini, .squawk.toml)",
    ),
    # --- recovery ---
    Setting("DBOPS_CACHE_DIR", _path, ".dbops/cache", "cache of expected schema fingerprints"),
    Setting(
        "DBOPS_RECOVER_SCHEMAS",
        _names,
        "",
        "schemas compared by recover/doctor (default: every user schema)",
    ),
    # --- the service: schedules, drills, metrics, events ---
    Setting(
        "DBOPS_BACKUP_SCHEDULE", _cron, "0 3 * * *", "when invoke serve backs up (cron; off: never)"
    ),
    Setting(
        "DBOPS_DRILL_SCHEDULE",
        _cron,
        "30 4 * * 0",
        "when invoke serve runs a restore drill (cron; off: never)",
    ),
    Setting("DBOPS_SCHEDULE_TIMEZONE", _text, "UTC", "time zone of the cron schedules (IANA name)"),
    Setting(
        "DBOPS_DRILL_CHECKS",
        _path,
        None,
        "folder of *.sql checks a drill runs on the restored copy; each returns true",
    ),
    Setting(
        "DBOPS_DRILL_MAX_AGE_DAYS", _number, "8", "doctor warns when the last passed drill is older"
    ),
    Setting(
        "DBOPS_METRICS_FILE",
        _path,
        None,
        "Prometheus textfile written after each operation (unset: none)",
    ),
    Setting(
        "DBOPS_LOG_FORMAT",
        _choice("text", "json"),
        "text",
        "json: one JSON event per step and a summary per command on stderr",
    ),
    Setting(
        "DBOPS_NOTIFY_URL",
        _text,
        None,
        "pinged on start (URL/start), success (URL) and failure (URL/fail)",
    ),
    Setting(
        "DBOPS_NOTIFY_TIMEOUT",
        _number,
        "5",
        "seconds a notify ping may take (it never fails the operation)",
    ),
    # --- fleet (docs/scaling.md) ---
    Setting(
        "DBOPS_FLEET_FILE",
        _path,
        "fleet.toml",
        "invoke fleet: the databases, their connections and waves",
    ),
    Setting(
        "DBOPS_FLEET_DIR",
        _path,
        ".dbops/fleet",
        "invoke fleet: run state (for --resume) and one log per database",
    ),
    Setting(
        "DBOPS_RESULT_FILE",
        _path,
        None,
        "a task writes its result here as JSON (invoke fleet sets it per database)",
    ),
    # --- kubernetes target (docs/scaling.md) ---
    Setting("DBOPS_KUBECTL", _argv, "kubectl", "the kubectl command"),
    Setting(
        "DBOPS_K8S_CONTEXT", _text, "", "kubeconfig context (default: kubectl's current context)"
    ),
    Setting("DBOPS_K8S_NAMESPACE", _required, "default", "namespace of the db and backend pods"),
    Setting("DBOPS_K8S_DB_SELECTOR", _required, "app=db", "label selector of the PostgreSQL pod"),
    Setting(
        "DBOPS_K8S_DB_CONTAINER", _text, "", "container in the db pod (default: the pod's default)"
    ),
    Setting(
        "DBOPS_K8S_BACKEND_SELECTOR",
        _required,
        "app=backend",
        "label selector of the pod where alembic runs",
    ),
    Setting(
        "DBOPS_K8S_BACKEND_CONTAINER",
        _text,
        "",
        "container in the backend pod (default: the pod's default)",
    ),
    Setting(
        "DBOPS_K8S_AGENT_PATH",
        _required,
        "/opt/dbops",
        "folder holding dbops/ in the backend pod (its PYTHONPATH)",
    ),
    Setting(
        "DBOPS_K8S_IMAGE",
        _text,
        "",
        "k8s-job: image with dbops, alembic project and pg client tools",
    ),
    Setting(
        "DBOPS_K8S_APP_DIR",
        _required,
        "/app",
        "k8s-job: the Alembic project's folder in the image (ops.Dockerfile: /app)",
    ),
    Setting(
        "DBOPS_K8S_SECRET",
        _required,
        "dbops-db",
        "k8s-job: Secret holding POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB",
    ),
    Setting(
        "DBOPS_K8S_BACKUP_CLAIM",
        _required,
        "dbops-backups",
        "k8s-job: PersistentVolumeClaim the backups are written to",
    ),
    Setting(
        "DBOPS_K8S_JOB_DEADLINE",
        _whole(60),
        "1800",
        "k8s-job: activeDeadlineSeconds of the migrate Job",
    ),
)
DECLARED: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    project_dir: Path
    target: str
    compose: tuple[str, ...]
    db_service: str
    backend_service: str
    alembic_ini: Path | None  # None: no project found (ALEMBIC_INI_SEARCH says where it looked)
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
    sources: dict[str, str] = field(repr=False, default_factory=dict)
    # where a relative path of each setting is taken from (see relative_base)
    path_bases: dict[str, Path] = field(repr=False, default_factory=dict)
    # the folders searched for alembic.ini when DBOPS_ALEMBIC_INI is not set
    alembic_ini_search: tuple[Path, ...] = field(repr=False, default=())

    def get(self, name: str) -> Any:
        """The typed value of a declared setting (its default when unset; None when it has
        none). Paths come back absolute: a relative one is taken from where it was written
        (relative_base)."""
        value = parse_setting(DECLARED[name], self.raw.get(name))
        if isinstance(value, Path) and not value.is_absolute():
            value = self.path_bases.get(name, self.project_dir) / value
        return value

    @property
    def audit_log(self) -> Path:
        return self.get("DBOPS_AUDIT_LOG") or self.backup_dir / "audit.jsonl"

    @property
    def is_production(self) -> bool:
        return self.environment.lower() in ("production", "prod")

    def secrets(self) -> list[str]:
        """Values that must never be printed."""
        return [s for s in (self.password, self.raw.get("DBOPS_NOTIFY_URL", "").strip()) if s]


def parse_setting(setting: Setting, raw: str | None) -> Any:
    """Parse one value; an unset or empty optional setting gives its default."""
    if raw is None or (not raw.strip() and setting.parse is not _required):
        raw = setting.default
    if raw is None:
        if setting.parse is _required:
            raise ConfigError(
                f"{setting.name} is not set: add it to .env (see .env.example) or the environment"
            )
        return None
    try:
        return setting.parse(raw)
    except ValueError as exc:
        shown = "****" if setting.name == "POSTGRES_PASSWORD" else repr(raw)
        if str(exc) == "is not set":
            raise ConfigError(
                f"{setting.name} is not set: add it to .env (see .env.example) or the environment"
            ) from None
        raise ConfigError(
            f"{setting.name}={shown} {exc} ({setting.meaning}): fix it in .env or the environment"
        ) from None


def relative_base(source: str, project_dir: Path, cwd: Path) -> Path:
    """Where a relative path is taken from: the folder of the .env file it was written in;
    the working directory for the process environment (the shell it was typed in); the
    project directory for defaults and the invoke config. So `DBOPS_ALEMBIC_INI=backend/
    alembic.ini` means the project's backend/, never a folder of the dbops checkout."""
    if source == "environment":
        return cwd
    if source in ("default", "invoke config"):
        return project_dir
    return Path(source).resolve().parent  # a .env file


def find_alembic_ini(start: Path) -> tuple[Path | None, tuple[Path, ...]]:
    """alembic.ini in ``start`` or the nearest folder above it (as git finds .git), and
    the folders searched: what a refusal names when there is none."""
    searched = []
    for folder in (start, *start.parents):
        searched.append(folder)
        if (folder / "alembic.ini").is_file():
            return folder / "alembic.ini", tuple(searched)
    return None, tuple(searched)


def no_project_message(settings: Settings) -> str:
    """The refusal when there is no Alembic project to work on: never the bundled sample app
    by default, against whatever database the settings name."""
    searched = settings.alembic_ini_search
    where = f"in {searched[0]} nor any folder above it" if searched else "in the working directory"
    return (
        f"no Alembic project: DBOPS_ALEMBIC_INI is not set and there is no alembic.ini {where}; "
        "run from your project's folder, pass --ini PATH (the dbops command) or set "
        "DBOPS_ALEMBIC_INI (this bundle's sample app: DBOPS_ALEMBIC_INI=backend/alembic.ini, "
        "as in .env.example)"
    )


def operator() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def load_settings(
    project_dir: Path | str,
    invoke_config: dict | None = None,
    environ: dict[str, str] | None = None,
    cwd: Path | str | None = None,
) -> Settings:
    """Layer the sources, then parse every declared setting: a bad value is refused here,
    before any task has touched anything. ``cwd`` (default: the working directory) is where
    relative paths from the environment are taken from and alembic.ini is looked for."""
    project_dir = Path(project_dir).resolve()
    cwd = Path(cwd or Path.cwd()).resolve()
    environ = dict(os.environ if environ is None else environ)
    env_file = Path(environ.get("DBOPS_ENV_FILE") or project_dir / ".env")
    values: dict[str, str] = {}
    sources: dict[str, str] = {}

    def layer(source: str, items) -> None:
        for key, value in items:
            if value is not None:
                values[key] = str(value)
                sources[key] = source

    layer("invoke config", ((k.upper(), v) for k, v in (invoke_config or {}).items()))
    if env_file.is_file():
        layer(str(env_file), dotenv_values(env_file).items())
    layer(
        "environment",
        (
            (k, v)
            for k, v in environ.items()
            if k in DECLARED or k.startswith(("DBOPS_", "POSTGRES_"))
        ),
    )
    typed = {s.name: parse_setting(s, values.get(s.name)) for s in SETTINGS}
    bases = {
        s.name: relative_base(sources[s.name], project_dir, cwd)
        for s in SETTINGS
        if s.parse is _path and s.name in sources
    }

    def path(key: str) -> Path:
        p = typed[key]
        return p if p.is_absolute() else bases.get(key, project_dir) / p

    searched: tuple[Path, ...] = ()
    if typed["DBOPS_ALEMBIC_INI"] is None:
        alembic_ini, searched = find_alembic_ini(cwd)
    else:
        alembic_ini = path("DBOPS_ALEMBIC_INI")

    return Settings(
        project_dir=project_dir,
        target=typed["DBOPS_TARGET"],
        compose=typed["DBOPS_COMPOSE"],
        db_service=typed["DBOPS_DB_SERVICE"],
        backend_service=typed["DBOPS_BACKEND_SERVICE"],
        alembic_ini=alembic_ini,
        backend_alembic_ini=typed["DBOPS_BACKEND_ALEMBIC_INI"],
        backup_dir=path("DBOPS_BACKUP_DIR"),
        host=typed["POSTGRES_HOST"],
        port=typed["POSTGRES_PORT"],
        user=typed["POSTGRES_USER"],
        password=values.get("POSTGRES_PASSWORD", ""),
        database=typed["POSTGRES_DB"],
        maintenance_db=typed["DBOPS_MAINTENANCE_DB"],
        lock_timeout=typed["DBOPS_LOCK_TIMEOUT"],
        statement_timeout=typed["DBOPS_STATEMENT_TIMEOUT"],
        lock_retries=typed["DBOPS_LOCK_RETRIES"],
        pg_bindir=typed["DBOPS_PG_BINDIR"],
        environment=typed["ENVIRONMENT"],
        raw=values,
        sources=sources,
        path_bases=bases,
        alembic_ini_search=searched,
    )


def describe(settings: Settings) -> list[dict]:
    """Every declared setting: its effective value (the password masked), where it came from
    and what it means — what `invoke settings` shows."""
    rows = []
    for s in SETTINGS:
        value = settings.get(s.name)
        if s.name in ("POSTGRES_PASSWORD", "DBOPS_NOTIFY_URL"):  # the URL is a token
            value = "****" if value else ""
        elif isinstance(value, tuple):
            value = " ".join(value) if s.name == "DBOPS_COMPOSE" else ",".join(value)
        elif value is None:
            value = ""
        source = settings.sources.get(s.name, "default")
        if s.name == "DBOPS_ALEMBIC_INI" and source == "default":
            value = settings.alembic_ini or "(none found)"
            source = "found from the working directory"
        rows.append(
            {
                "name": s.name,
                "value": str(value),
                "source": source,
                "meaning": s.meaning,
            }
        )
    return rows
