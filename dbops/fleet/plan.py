"""fleet.toml → the ordered members of a fleet run.

    [defaults]                      # every key of a [[database]] entry except name
    target = "local"
    user = "app"
    password_env = "FLEET_PG_PASSWORD"   # the NAME of an environment variable, never a password

    [[database]]
    name = "eu-west"                # unique; the backups go to <DBOPS_BACKUP_DIR>/<name>/
    host = "eu.db.internal"
    db = "app"
    wave = 1

    [[discover]]                    # every database on a server matching a condition
    name = "tenants"                # members are named tenants/<datname>
    host = "tenants.db.internal"
    where = "datname LIKE 'tenant_%'"
    wave = 2

A member is the environment that points the ordinary per-database tasks at one database:
POSTGRES_HOST/PORT/USER/DB, DBOPS_TARGET, DBOPS_BACKUP_DIR and any declared DBOPS_* setting in
an entry's ``settings`` table. Every member's settings are parsed before anything starts.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dbops import seam
from dbops.config import DECLARED, Settings, load_settings
from dbops.errors import ConfigError, OpsError

FIELD_ENV = {
    "target": "DBOPS_TARGET",
    "host": "POSTGRES_HOST",
    "port": "POSTGRES_PORT",
    "user": "POSTGRES_USER",
    "db": "POSTGRES_DB",
    "backup_dir": "DBOPS_BACKUP_DIR",
}
ENTRY_KEYS = {"name", "wave", "password_env", "settings", *FIELD_ENV}
DISCOVER_KEYS = (ENTRY_KEYS - {"db"}) | {"where"}
# Set by the fleet itself, or secret: never from the file.
NOT_IN_FILE = {
    "POSTGRES_PASSWORD",
    "DBOPS_RESULT_FILE",
    "DBOPS_FLEET_FILE",
    "DBOPS_FLEET_DIR",
    "DBOPS_ENV_FILE",
}
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:-]*(/[A-Za-z0-9_][A-Za-z0-9_.@:-]*)*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

DISCOVER_SQL = """SET default_transaction_read_only = on;
SELECT datname FROM pg_database
WHERE datallowconn AND NOT datistemplate AND ({where})
ORDER BY datname;
"""


@dataclass
class Member:
    name: str
    wave: int
    order: tuple[int, int]
    env: dict[str, str] = field(repr=False)  # what points the tasks at this database
    password_env: str | None = None

    @property
    def where(self) -> str:
        e = self.env
        return (
            f"{e.get('DBOPS_TARGET', '?')}:{e.get('POSTGRES_HOST', '')}:"
            f"{e.get('POSTGRES_PORT', '')}/{e.get('POSTGRES_DB', '')}"
        )

    @property
    def server(self) -> str:
        """The PostgreSQL server this member lives on, as far as its settings tell."""
        e = self.env
        reach = {
            "compose": e.get("DBOPS_COMPOSE", ""),
            "kubernetes": f"{e.get('DBOPS_K8S_CONTEXT', '')}/{e.get('DBOPS_K8S_NAMESPACE', '')}/"
            f"{e.get('DBOPS_K8S_DB_SELECTOR', '')}",
        }.get(e.get("DBOPS_TARGET", ""), "")
        return f"{e.get('DBOPS_TARGET')}:{reach}:{e.get('POSTGRES_HOST')}:{e.get('POSTGRES_PORT')}"

    def environ(self, base: dict[str, str]) -> dict[str, str]:
        """The child's environment: the runner's, this member's settings, its password."""
        env = {k: v for k, v in base.items() if k != "DBOPS_RESULT_FILE"}
        env.update(self.env)
        if self.password_env:
            env["POSTGRES_PASSWORD"] = base.get(self.password_env, "")
        return env

    def command(self, verb: str, flags: list[str]) -> str:
        """The standalone command for this database alone (the password by variable name)."""
        parts = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        if self.password_env:
            parts.append(f'POSTGRES_PASSWORD="${self.password_env}"')
        return " ".join(["env", *parts, "invoke", verb, *map(shlex.quote, flags)])


def load(settings: Settings, path: Path | None = None, *, discover: bool = True) -> list[Member]:
    """Every member in run order (wave, then file order); refused as a whole on any bad entry."""
    path = path or settings.get("DBOPS_FLEET_FILE")
    if not path.is_file():
        raise ConfigError(
            f"DBOPS_FLEET_FILE: {path} does not exist",
            next_command=f"cp {settings.project_dir / 'fleet.example.toml'} {path}   "
            f"(then list your databases in it; docs/scaling.md)",
        )
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"defaults", "database", "discover"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))} "
            f"(expected [defaults], [[database]], [[discover]])"
        )
    _check_shape(path, doc)
    defaults = doc.get("defaults", {})
    _check_keys(path, "[defaults]", defaults, ENTRY_KEYS - {"name"})
    members: list[Member] = []
    for i, entry in enumerate(doc.get("database", [])):
        label = f"[[database]] #{i + 1}"
        _check_keys(path, label, entry, ENTRY_KEYS)
        merged = _merge(defaults, entry)
        if not merged.get("db"):
            raise ConfigError(f"{path}: {label}: 'db' (the database name) is required")
        members.append(
            _member(settings, path, merged, merged.get("name") or str(merged["db"]), (i, 0))
        )
    for i, entry in enumerate(doc.get("discover", [])):
        label = f"[[discover]] #{i + 1}"
        _check_keys(path, label, entry, DISCOVER_KEYS)
        merged = _merge(defaults, entry)
        if not str(merged.get("where", "")).strip():
            raise ConfigError(
                f"{path}: {label}: 'where' (a condition on pg_database, e.g. "
                f"datname LIKE 'tenant_%') is required"
            )
        if not discover:
            continue
        maintenance = merged["settings"].get("DBOPS_MAINTENANCE_DB", settings.maintenance_db)
        server = _member(
            settings,
            path,
            {**merged, "db": maintenance},
            merged.get("name") or f"discover-{i + 1}",
            (0, 0),
        )
        prefix = merged.get("name")
        for j, datname in enumerate(discover_databases(settings, server, merged["where"])):
            members.append(
                _member(
                    settings,
                    path,
                    {**merged, "db": datname},
                    f"{prefix}/{datname}" if prefix else datname,
                    (len(doc.get("database", [])) + i, j),
                )
            )
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"{path}: database names must be unique; repeated: {', '.join(dupes)} "
            f"(give each entry its own name = ...)"
        )
    return sorted(members, key=lambda m: (m.wave, m.order))


# The schema of an entry: each key's TOML type (bool is an int in Python: refused apart).
KEY_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "wave": (int,),
    "password_env": (str,),
    "settings": (dict,),
    "target": (str,),
    "host": (str,),
    "port": (int, str),
    "user": (str,),
    "db": (str,),
    "backup_dir": (str,),
    "where": (str,),
}
TYPE_WORDS = {str: "a string", int: "a whole number", dict: "a table"}


def _check_shape(path: Path, doc: dict) -> None:
    """fleet.toml against its schema: [defaults] a table, [[database]]/[[discover]] arrays of
    tables, every known key of its type, every settings value a string, number or boolean."""
    if not isinstance(doc.get("defaults", {}), dict):
        raise ConfigError(f"{path}: [defaults] must be a table")
    entries = [("[defaults]", doc.get("defaults", {}))]
    for section in ("database", "discover"):
        items = doc.get(section, [])
        if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
            raise ConfigError(
                f"{path}: {section} must be written as [[{section}]] tables "
                f"(one per entry), not {type(items).__name__}"
            )
        entries += [(f"[[{section}]] #{i + 1}", e) for i, e in enumerate(items)]
    for label, entry in entries:
        for key, value in entry.items():
            types = KEY_TYPES.get(key)
            if types is None:
                continue  # unknown keys: _check_keys names them with the allowed ones
            if isinstance(value, bool) or not isinstance(value, types):
                want = " or ".join(TYPE_WORDS[t] for t in types)
                raise ConfigError(
                    f"{path}: {label}: {key} must be {want}, not {type(value).__name__} "
                    f"({value!r})"[:300]
                )
            if key in ("name", "db", "host", "user", "target") and not value.strip():
                raise ConfigError(f"{path}: {label}: {key} is empty")
        for key, value in (entry.get("settings") or {}).items():
            if not isinstance(value, str | int | float | bool):
                raise ConfigError(
                    f"{path}: {label}: settings.{key} must be a string, number or boolean, "
                    f"not {type(value).__name__}"
                )


def _check_keys(path: Path, label: str, entry: dict, allowed: set[str]) -> None:
    bad = set(entry) - allowed
    if "password" in bad:
        raise ConfigError(
            f"{path}: {label}: passwords are never written in the fleet file: "
            f"put it in an environment variable and name it with password_env"
        )
    if bad:
        raise ConfigError(
            f"{path}: {label}: unknown key(s) {', '.join(sorted(bad))} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _merge(defaults: dict, entry: dict) -> dict:
    merged = {**defaults, **entry}
    merged["settings"] = {**defaults.get("settings", {}), **entry.get("settings", {})}
    return merged


def _member(settings: Settings, path: Path, e: dict, name: str, order: tuple[int, int]) -> Member:
    label = f"{path.name}: {name}"
    if not NAME.fullmatch(name) or ".." in name.split("/"):
        raise ConfigError(f"{label}: the name may hold letters, digits and _ . @ : - / only")
    wave = e.get("wave", 1)
    if not isinstance(wave, int) or wave < 0:
        raise ConfigError(f"{label}: wave must be a whole number (0 or more), not {wave!r}")
    env: dict[str, str] = {}
    for key, var in FIELD_ENV.items():
        if key in e:
            env[var] = str(e[key])
    env.setdefault("DBOPS_BACKUP_DIR", str(settings.backup_dir / name))
    if not isinstance(e["settings"], dict):
        raise ConfigError(f"{label}: settings must be a table of DBOPS_* settings")
    for key, value in e["settings"].items():
        if key in NOT_IN_FILE:
            raise ConfigError(
                f"{label}: {key} cannot be set in the fleet file"
                + (" (use password_env)" if key == "POSTGRES_PASSWORD" else "")
            )
        if key not in DECLARED:
            raise ConfigError(
                f"{label}: settings.{key} is not a dbops setting (invoke settings lists them)"
            )
        env[key] = str(value)
    pw = e.get("password_env")
    if pw is not None and (not isinstance(pw, str) or not ENV_NAME.fullmatch(pw)):
        raise ConfigError(
            f"{label}: password_env names an environment variable, e.g. "
            f'password_env = "TENANTS_PG_PASSWORD"'
        )
    if pw and pw not in os.environ:
        raise ConfigError(
            f"{label}: password_env = {pw!r}, but {pw} is not set in the environment",
            next_command=f"export {pw}=...   (or read it from your secret store), then re-run",
        )
    member = Member(name, wave, order, env, pw)
    parsed = member_settings(settings, member)  # every value parsed now, before anything starts
    # Spelled out, so that where it points and its standalone command do not hang on .env.
    env.update(
        {
            "DBOPS_TARGET": parsed.target,
            "POSTGRES_HOST": parsed.host,
            "POSTGRES_PORT": str(parsed.port),
            "POSTGRES_USER": parsed.user,
            "POSTGRES_DB": parsed.database,
        }
    )
    return member


def member_settings(settings: Settings, member: Member) -> Settings:
    try:
        return load_settings(settings.project_dir, environ=member.environ(dict(os.environ)))
    except ConfigError as exc:
        raise ConfigError(
            f"fleet member {member.name}: {exc.message} (or give it to this entry "
            f"in the fleet file)"
        ) from None


def discover_databases(settings: Settings, server: Member, where: str) -> list[str]:
    """The databases on ``server`` matching ``where``, by psql through the seam (read-only)."""
    s = member_settings(settings, server)
    target = seam.target_for(s)
    target.ensure_available()
    done = seam.run(
        target.pg(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]),
        input=DISCOVER_SQL.format(where=where).encode(),
        timeout=120,
    )
    if done.returncode != 0:
        why = seam.mask(done.stderr.decode(errors="replace").strip(), s.secrets())
        raise OpsError(
            f"discovery on {server.where} ({where}) failed: "
            f"{why.splitlines()[-1] if why else 'no output'}",
            state="nothing was started",
            next_command="invoke fleet current   # after fixing the [[discover]] entry "
            "(server, credentials, where)",
        )
    return [ln for ln in done.stdout.decode().splitlines() if ln.strip()]
