"""doctor's first check: can dbops reach the database, as a writable primary? A failed
connection is classified by cause (refused, authentication, too many connections, database
missing, starting) and a standby or a read-only database is named; each gets the command
that moves it toward healthy, not always pg_isready."""

from __future__ import annotations

from dataclasses import dataclass

from dbops import seam
from dbops.config import Settings
from dbops.ops.doctor_facts import (
    FAIL,
    OK,
    WARN,
    Check,
    Facts,
    _env_file,
    _ident,
    _lit,
    _major,
    pg_dump_version,
    psql_command,
)


def connectivity(f: Facts) -> Check:
    s = f.settings
    if f.start_error is not None:  # the agent could not even start (config, compose, python)
        return Check(
            "connectivity",
            FAIL,
            f.start_error.message,
            next=f.start_error.next_command or "check .env (see .env.example)",
            why="the agent cannot start",
        )
    conn = f.raw.get("connection") or {}
    if not conn.get("ok"):
        return _connect_failure(f, conn)
    srv = f.raw.get("server") or {}
    if srv.get("in_recovery"):
        return _standby(f, srv)
    if srv.get("read_only"):
        return _read_only(f, srv)
    st = f.status or {}
    dump_v = pg_dump_version(s)
    f.result["pg_dump_version"] = dump_v
    if not st:
        return Check(
            "connectivity", OK, f"connected to {s.database}; pg_dump {dump_v or 'unknown'}"
        )
    server_major, dump_major = _major(st["server_version"]), _major(dump_v)
    line = f"PostgreSQL {st['server_version']}; pg_dump {dump_v or 'unknown'}"
    if dump_v is None:
        return Check("connectivity", WARN, f"{line} (pg_dump --version did not answer)")
    if dump_major is not None and server_major is not None and dump_major < server_major:
        return Check(
            "connectivity",
            WARN,
            f"{line}: pg_dump is older than the server and will refuse to dump it",
        )
    return Check("connectivity", OK, line)


@dataclass(frozen=True)
class _Failed:
    """A connection that failed: its cause and how to name it."""

    s: Settings
    conn: dict
    cause: str
    why: str  # the error text
    where: str  # host:port, or the compose service
    env: str  # the .env file that holds the connection settings
    ready: str  # pg_isready -h … (local) / invoke up (compose)


def _connect_failure(f: Facts, conn: dict) -> Check:
    s = f.settings
    x = _Failed(
        s=s,
        conn=conn,
        cause=conn.get("cause") or "other",
        why=conn.get("error") or f.errors.get("facts") or f.errors.get("status") or "no answer",
        where=f"{s.host}:{s.port}" if s.target == "local" else f"the '{s.db_service}' service",
        ready=seam.target_for(s).reach_hint(),
        env=_env_file(s),
    )
    swap = conn.get("swap") or {}
    if swap.get("interrupted") in ("closed", "moved_away"):
        return _swap_interrupted(x, swap)
    return BY_CAUSE.get(x.cause, _unreachable)(x)


def _swap_interrupted(x: _Failed, swap: dict) -> Check:
    from dbops.ops.restore import describe_swap

    return Check(
        "connectivity",
        FAIL,
        f"{describe_swap(swap)}: every application connection is refused ({x.why})",
        ["restore-undo reopens it, or renames it back and reopens it (RUNBOOK.md)"],
        next="invoke restore-undo",
        why="an interrupted restore swap",
        data={"cause": "swap_interrupted", "swap": swap},
    )


def _auth_failed(x: _Failed) -> Check:
    s, env = x.s, x.env
    return Check(
        "connectivity",
        FAIL,
        f"the server at {x.where} rejects role {s.user} (authentication failed): {x.why}",
        [
            f"the role and password come from POSTGRES_USER/POSTGRES_PASSWORD in {env} "
            f"(or the environment); or, as a superuser: ALTER ROLE {s.user} PASSWORD …"
        ],
        next=f"invoke doctor   (after setting POSTGRES_USER/POSTGRES_PASSWORD in {env} "
        f"to a role the server accepts)",
        why="authentication failed",
        data={"cause": x.cause},
    )


def _too_many(x: _Failed) -> Check:
    s, conn = x.s, x.conn
    role = conn.get("too_many_for_role")
    scope = (
        f"role {s.user} has used up its connection limit"
        if role
        else f"database {s.database} has used up its connection limit"
        if conn.get("too_many_for_database")
        else "the server has used up max_connections"
    )
    where_sql = f"usename = {_lit(s.user)}" if role else f"datname = {_lit(s.database)}"
    sql = (
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where_sql} "
        f"AND state = 'idle' AND backend_type = 'client backend'"
    )
    return Check(
        "connectivity",
        FAIL,
        f"{scope}: {x.why}",
        [
            f"see who holds them (as a superuser): SELECT pid, usename, application_name, "
            f"client_addr, state, now() - state_change FROM pg_stat_activity WHERE "
            f"{where_sql}",
            "idle sessions (not in a transaction) lose nothing when ended: a pool "
            "reconnects; or raise the limit (ALTER ROLE … CONNECTION LIMIT n)",
        ],
        next=psql_command(sql, env="POSTGRES_USER=<superuser>")
        + "   (a superuser may still connect; its password from the environment)",
        why="no connection slot left",
        data={"cause": x.cause},
    )


def _database_missing(x: _Failed) -> Check:
    s = x.s
    sql = f"CREATE DATABASE {_ident(s.database)}"
    return Check(
        "connectivity",
        FAIL,
        f"database {s.database} does not exist on {x.where}: {x.why}",
        [
            f"a typo? POSTGRES_DB in {x.env}",
            "dropped? after creating it, restore the newest verified backup "
            "(invoke backups, invoke restore <file>); new? invoke migrate builds it",
        ],
        next=psql_command(sql, env="POSTGRES_DB=postgres")
        + "   (if the name is right; then invoke migrate or invoke restore)",
        why="the database does not exist",
        data={"cause": x.cause},
    )


def _starting(x: _Failed) -> Check:
    return Check(
        "connectivity",
        FAIL,
        f"the server at {x.where} is starting or stopping: {x.why}",
        next=x.ready,
        why="the server is not accepting connections yet",
        data={"cause": x.cause},
    )


def _unreachable(x: _Failed) -> Check:
    """Refused, or another cause: nothing (or not the server) answers."""
    return Check(
        "connectivity",
        FAIL,
        f"cannot reach database {x.s.database}: {x.why}",
        [
            f"nothing answers at {x.where}: the server is down, or POSTGRES_HOST/POSTGRES_PORT "
            f"in {x.env} point elsewhere"
        ]
        if x.cause == "refused"
        else [],
        next=x.ready,
        why="the database does not answer",
        data={"cause": x.cause},
    )


BY_CAUSE = {
    "auth": _auth_failed,
    "too_many": _too_many,
    "database_missing": _database_missing,
    "starting": _starting,
}


def _standby(f: Facts, srv: dict) -> Check:
    s = f.settings
    p = srv.get("primary")
    there = f" (its primary: {p['host']}:{p['port']})" if p else ""
    nxt = (
        f"POSTGRES_HOST={p['host']} POSTGRES_PORT={p['port']} invoke doctor   (then set them "
        f"in {_env_file(s)})"
        if p
        else (
            "invoke doctor   (after pointing POSTGRES_HOST/POSTGRES_PORT in "
            f"{_env_file(s)} at the primary)"
        )
    )
    return Check(
        "connectivity",
        FAIL,
        f"{s.host}:{s.port} is a read-only standby (in recovery)"
        f"{there}: migrate, stamp and restore would fail with 'cannot execute … in a "
        f"read-only transaction'",
        next=nxt,
        why="the target is a standby",
        data={"cause": "standby", "primary": p},
    )


def _read_only(f: Facts, srv: dict) -> Check:
    s = f.settings
    source = srv.get("read_only_source")
    reset = {
        "database": f"ALTER DATABASE {_ident(s.database)} RESET default_transaction_read_only",
        "user": f"ALTER ROLE {_ident(s.user)} RESET default_transaction_read_only",
        "database user": f"ALTER ROLE {_ident(s.user)} IN DATABASE {_ident(s.database)} "
        f"RESET default_transaction_read_only",
    }.get(source or "")
    where = {
        "database": f"on database {s.database}",
        "user": f"on role {s.user}",
        "database user": f"on role {s.user} in database {s.database}",
        "client": "by the client (PGOPTIONS?)",
        "configuration file": "in postgresql.conf / ALTER SYSTEM",
    }.get(source or "", source)
    summary = (
        f"database {s.database} is read-only: default_transaction_read_only = on, set "
        f"{where}: migrate would fail with 'cannot execute … in a read-only transaction'"
    )
    if reset:
        nxt = (
            psql_command(f"BEGIN READ WRITE; {reset}; COMMIT")
            + "   (if nobody made it read-only on purpose)"
        )
    else:
        nxt = f"invoke doctor   (after turning default_transaction_read_only off {where})"
    return Check(
        "connectivity",
        FAIL,
        summary,
        next=nxt,
        why="the database is read-only",
        data={"cause": "read_only", "read_only_source": source},
    )
