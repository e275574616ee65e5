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
import io
import math
import os
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from dbops.agent.masking import secret_forms  # noqa: F401  (also config.secret_forms)
from dbops.errors import ConfigError


# --- value types: each parses a string or raises ValueError saying what it expects ---
def _text(raw: str) -> str:
    return raw.strip()


def _required(raw: str) -> str:
    if not raw.strip():
        raise ValueError("is not set")
    return raw.strip()


INT_MAX = 2**31 - 1  # PostgreSQL's integer settings and most counts dbops passes on


def _whole(minimum: int = 0, maximum: int | None = None) -> Callable[[str], int]:
    top = INT_MAX if maximum is None else maximum

    def parse(raw: str) -> int:
        v = raw.strip()
        if not re.fullmatch(r"[+-]?\d+", v):  # no 1e3, 2.0, "1 0", nan
            raise ValueError("is not a whole number")
        n = int(v)
        if n < minimum or n > top:
            raise ValueError(
                f"must be between {minimum} and {maximum}"
                if maximum is not None
                else f"must be {minimum} or more (at most {top})"
            )
        return n

    parse.__doc__ = "a whole number"
    return parse


def _bounded(minimum: float = 0.0, maximum: float = 1e9, *, above: bool = False):
    """A finite decimal number in [minimum, maximum] (``above``: strictly more than minimum);
    nan, inf, 1e400 and negative values are refused."""

    def parse(raw: str) -> float:
        v = raw.strip()
        if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", v):
            raise ValueError("is not a number")
        n = float(v)
        if not math.isfinite(n):
            raise ValueError("is not a finite number")
        low_ok = n > minimum if above else n >= minimum
        if not low_ok or n > maximum:
            low = f"more than {minimum:g}" if above else f"{minimum:g}"
            raise ValueError(f"must be between {low} and {maximum:g}")
        return n

    parse.__doc__ = "a number"
    return parse


_number = _bounded(0.0, 1e12)  # any count of MB, seconds or days: finite, 0 or more


def _flag(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "on", "yes", "true"):
        return True
    if v in ("0", "off", "no", "false", ""):
        return False
    raise ValueError("is not on/off (1/0, yes/no, true/false)")


DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?")
DURATION_MS = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "min": 60_000, "h": 3_600_000}
DURATION_MS["d"] = 86_400_000


def duration_ms(value: str) -> float:
    """Milliseconds in a duration as ``_duration`` returns it (a bare number is ms, as
    lock_timeout takes it)."""
    m = DURATION.fullmatch(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration")
    return float(m.group(1)) * DURATION_MS[m.group(2)]


def _duration(raw: str) -> str:
    """A PostgreSQL duration as lock_timeout takes it: 0, 500ms, 2s, 5min, 1h; normalised
    (no space, lower case; a fraction of a unit in whole ms) and at most INT_MAX ms, the
    largest value lock_timeout/statement_timeout accept, so the server never refuses it."""
    v = raw.strip().lower()
    m = DURATION.fullmatch(v)
    if not m:
        raise ValueError("is not a duration such as 0, 500ms, 2s, 5min or 1h")
    ms = duration_ms(v)
    if ms > INT_MAX:
        raise ValueError(f"is longer than PostgreSQL accepts ({INT_MAX} ms, about 24 days)")
    number, unit = m.group(1), m.group(2) or ""  # a bare number is ms, as PostgreSQL reads it
    if unit == "us" or not float(number).is_integer():
        return f"{max(1, round(ms)) if ms > 0 else 0}ms"  # never rounded down to 0 (= off)
    return f"{int(float(number))}{unit}"


def _timezone(raw: str) -> str:
    """An IANA time zone name that this machine's tz database resolves (UTC, Europe/Paris)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    v = raw.strip()
    try:
        if not v or v.startswith(("/", ".")) or ".." in v:
            raise ValueError
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            "is not a known time zone (an IANA name such as UTC or Europe/Paris)"
        ) from None
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
    from dbops.cron import cron_trigger  # APScheduler parses it (host side only)

    try:
        cron_trigger(v)
    except ValueError as exc:
        raise ValueError(f"is not a cron schedule such as '0 3 * * *' or off ({exc})") from None
    return v


def _version_table(raw: str) -> str:
    """``table`` or ``schema.table``: plain identifiers (what env.py passes to alembic)."""
    v = raw.strip()
    if not re.fullmatch(r"([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*", v):
        raise ValueError(f"{v!r} is not TABLE or SCHEMA.TABLE (letters, digits, _ and $)")
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
        "DBOPS_VERSION_TABLE",
        _version_table,
        "alembic_version",
        "the table env.py keeps the revision in: TABLE or SCHEMA.TABLE (its version_table / "
        "version_table_schema; a mismatch is refused with the value to set)",
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
    Setting(
        "DBOPS_DEBUG",
        _flag,
        "0",
        "on a failure, also print the chain of causes (tracebacks) behind the error",
    ),
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
        _bounded(0, 3600),
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
        "objects the database has on purpose, left out of the models check (and tables of "
        "it out of the schema fingerprints doctor and recover compare) "
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
    Setting(
        "DBOPS_SCHEDULE_TIMEZONE", _timezone, "UTC", "time zone of the cron schedules (IANA name)"
    ),
    Setting(
        "DBOPS_DRILL_CHECKS",
        _path,
        None,
        "folder of *.sql checks a drill runs on the restored copy; each returns true",
    ),
    Setting(
        "DBOPS_DRILL_MAX_AGE_DAYS",
        _bounded(0, 36500),
        "8",
        "doctor warns when the last passed drill is older",
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
        "DBOPS_NOTIFY_URL_BACKUP",
        _text,
        None,
        "pings of backups (invoke backup, scheduled backups) instead of DBOPS_NOTIFY_URL",
    ),
    Setting(
        "DBOPS_NOTIFY_URL_DRILL",
        _text,
        None,
        "pings of restore drills instead of DBOPS_NOTIFY_URL",
    ),
    Setting(
        "DBOPS_NOTIFY_URL_MIGRATE",
        _text,
        None,
        "pings of invoke migrate instead of DBOPS_NOTIFY_URL",
    ),
    Setting(
        "DBOPS_NOTIFY_TIMEOUT",
        _bounded(0, 600, above=True),
        "5",
        "seconds a notify ping may take in all (connect, send, answer); never fails the operation",
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
    Setting(
        "DBOPS_K8S_JOB_TTL",
        _whole(0),
        "604800",
        "k8s-job: ttlSecondsAfterFinished (a finished Job and its pod are removed after it)",
    ),
    Setting(
        "DBOPS_K8S_REQUESTS",
        _text,
        "cpu=100m,memory=256Mi",
        "k8s-job: the container's resource requests (resource=quantity, comma-separated; none)",
    ),
    Setting(
        "DBOPS_K8S_LIMITS",
        _text,
        "memory=1Gi",
        "k8s-job: the container's resource limits (none: no limits)",
    ),
    # --- point-in-time recovery (pgBackRest; docs/pitr.md) ---
    Setting(
        "DBOPS_PITR_REPO",
        _path,
        None,
        "pgBackRest's folder: configuration, repository, logs, side instances (0700, owned by "
        "the server's OS user; default: the backup folder's sibling pgbackrest/)",
    ),
    Setting(
        "DBOPS_PITR_STANZA",
        _text,
        "",
        "pgBackRest stanza of the server (default: POSTGRES_DB)",
    ),
    Setting(
        "DBOPS_PITR_RETENTION_FULL",
        _whole(1),
        "2",
        "pgBackRest repo1-retention-full: full physical backups kept (older ones and their WAL "
        "are expired by pgBackRest)",
    ),
    Setting(
        "DBOPS_PITR_ARCHIVE_TIMEOUT",
        _duration,
        "60s",
        "archive_timeout pitr-enable sets: the most committed writes a lost server can lose",
    ),
    Setting(
        "DBOPS_ONLINE_MIN_ROWS",
        _whole(0),
        "50000",
        "invoke revision: tables with at least this many rows get the online operations "
        "(docs/online.md); --online: every table",
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
        """Values that must never be printed: the password and the notify URL in every form
        dbops (or a library it hands them to) writes them — raw, percent-encoded as urllib,
        SQLAlchemy's URL and a form post do, and with %% doubled as configparser needs —
        longest first, so that masking one form never leaves part of another."""
        urls = [self.raw.get(name, "").strip() for name in NOTIFY_URLS]
        return secret_forms(self.password, *urls)


NOTIFY_URLS = (
    "DBOPS_NOTIFY_URL",
    "DBOPS_NOTIFY_URL_BACKUP",
    "DBOPS_NOTIFY_URL_DRILL",
    "DBOPS_NOTIFY_URL_MIGRATE",
)


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


def whole_flag(flag: str, value: Any, minimum: int = 1, maximum: int = 1024) -> int | None:
    """A task's whole-number flag (``--jobs 4``): None when not given, else an int in range,
    or a ConfigError naming the flag (never a traceback, before anything is touched)."""
    if value is None or value == "":
        return None
    try:
        return _whole(minimum, maximum)(str(value))
    except ValueError as exc:
        raise ConfigError(f"{flag}={value!r} {exc}; nothing was touched") from None


def read_env_file(path: Path) -> dict[str, str | None]:
    """A .env file as python-dotenv reads it, except that a line it cannot parse (an
    unterminated quote, ...) is an error naming the file and the line instead of the library's
    warning and a skipped value. A byte order mark and CRLF line ends are accepted."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot be read as UTF-8 text ({exc})",
            next_command=f"file {shlex.quote(str(path))}",
        ) from None
    text = text.replace("\r\n", "\n")
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            name = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)", binding.original.string)
            what = f"the value of {name.group(1)}" if name else "a line that is not NAME=value"
            raise ConfigError(  # the value itself is never shown: it may be the password
                f"{path}, line {line}: {what} cannot be parsed (an unterminated quote?); "
                "nothing was touched",
                next_command=f"sed -n {line}p {shlex.quote(str(path))}",
            )
    return dict(dotenv_values(stream=io.StringIO(text)))


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
        layer(str(env_file), read_env_file(env_file).items())
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
        if s.name in ("POSTGRES_PASSWORD", *NOTIFY_URLS):  # a ping URL is a token
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


def from_invoke(c) -> Settings:
    """The settings of an invoke task: its ``dbops`` config section (``-c``/``--ini``'s project,
    invoke.yaml overrides) over the .env and environment of that project (default: the working
    directory)."""
    cfg = dict(c.config.get("dbops", {}) or {})
    project_dir = cfg.pop("project_dir", None) or Path.cwd()
    return load_settings(project_dir, cfg)
