"""Connections from the environment the agent was started with.

POSTGRES_HOST/PORT/USER/PASSWORD/DB win; else DATABASE_URL; libpq's PG* fill gaps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:  # sqlalchemy is imported where it is used: a backup never needs it
    from sqlalchemy.engine import URL, Engine


def params() -> dict[str, str | int | None]:
    env = os.environ
    if env.get("POSTGRES_USER") and env.get("POSTGRES_DB"):
        return {
            "host": env.get("POSTGRES_HOST") or env.get("PGHOST"),
            "port": int(env.get("POSTGRES_PORT") or env.get("PGPORT") or 5432),
            "user": env["POSTGRES_USER"],
            "password": env.get("POSTGRES_PASSWORD") or None,
            "dbname": env["POSTGRES_DB"],
        }
    if env.get("DATABASE_URL"):
        from sqlalchemy.engine import make_url

        u = make_url(env["DATABASE_URL"])
        return {
            "host": u.host,
            "port": u.port or 5432,
            "user": u.username,
            "password": u.password,
            "dbname": u.database,
        }
    raise RuntimeError(
        "no database configured: set POSTGRES_USER/POSTGRES_DB (and host, port, "
        "password) or DATABASE_URL in the agent's environment"
    )


def database() -> str:
    return str(params()["dbname"])


def password() -> str | None:
    return params().get("password")  # type: ignore[return-value]


def connect(
    dbname: str | None = None, *, application_name: str = "dbops", autocommit: bool = True, **kwargs
) -> psycopg.Connection:
    p = {k: v for k, v in params().items() if v is not None}
    if dbname:
        p["dbname"] = dbname
    p.setdefault("connect_timeout", int(os.environ.get("PGCONNECT_TIMEOUT", "5")))
    conn = psycopg.connect(
        **p, application_name=application_name[:63], autocommit=autocommit, **kwargs
    )
    from dbops.agent import guard  # a step meant for one database: this one is checked too

    if guard.active() is not None:
        try:
            guard.check_psycopg(conn, str(p["dbname"]))
        except BaseException:
            conn.close()
            raise
    return conn


def sa_url(dbname: str | None = None) -> URL:
    from sqlalchemy.engine import URL

    p = params()
    return URL.create(
        "postgresql+psycopg",
        username=p["user"],
        password=p["password"],  # type: ignore[arg-type]
        host=p["host"],
        port=p["port"],
        database=dbname or p["dbname"],
    )  # type: ignore[arg-type]


def engine(dbname: str | None = None) -> Engine:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(
        sa_url(dbname),
        poolclass=NullPool,
        connect_args={"connect_timeout": int(os.environ.get("PGCONNECT_TIMEOUT", "5"))},
    )


_replaced: list[str] = []  # the databases pointed_at replaced, outermost first


def live_database() -> str:
    """The live database's name, also inside ``pointed_at`` (where ``database()`` is the
    scratch one)."""
    return _replaced[0] if _replaced else database()


@contextlib.contextmanager
def pointed_at(dbname: str) -> Iterator[None]:
    """Point every way an env.py may read its URL at another database (a scratch one)."""
    keys = ("POSTGRES_DB", "DATABASE_URL", "PGDATABASE")
    saved = {k: os.environ.get(k) for k in keys}
    _replaced.append(database())
    os.environ["POSTGRES_DB"] = dbname
    os.environ["PGDATABASE"] = dbname
    os.environ["DATABASE_URL"] = sa_url(dbname).render_as_string(hide_password=False)
    try:
        yield
    finally:
        _replaced.pop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def pg_options(**settings: str) -> Iterator[None]:
    """Session settings (lock_timeout, statement_timeout) for every connection env.py opens,
    through libpq's PGOPTIONS: works with any env.py."""
    saved = os.environ.get("PGOPTIONS")
    extra = " ".join(f"-c {k}={v}" for k, v in settings.items() if v not in (None, ""))
    os.environ["PGOPTIONS"] = " ".join(filter(None, [saved, extra]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PGOPTIONS", None)
        else:
            os.environ["PGOPTIONS"] = saved


def one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    msg = lines[0] if lines else type(exc).__name__
    pw = password()
    return msg.replace(pw, "****") if pw else msg


def version_rows(conn: psycopg.Connection) -> list[str]:
    """The version table's rows read on ``conn`` (in its snapshot), without loading alembic."""
    from psycopg import sql

    from dbops.agent import version_table

    if (
        conn.execute("SELECT to_regclass(%s)", [version_table.regclass_text()]).fetchone()[0]
        is None
    ):
        return []
    query = sql.SQL("SELECT version_num FROM {}").format(version_table.identifier())
    return sorted(r[0] for r in conn.execute(query))


INVALID_INDEXES_SQL = """
SELECT n.nspname, ic.relname, tc.relname, pg_get_indexdef(i.indexrelid), i.indisready
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE NOT i.indisvalid ORDER BY 1, 2
"""


def invalid_indexes(conn: psycopg.Connection) -> list[dict]:
    """INVALID indexes (a failed or unfinished CREATE INDEX CONCURRENTLY), every schema."""
    return [
        {"schema": s, "name": n, "table": t, "definition": d, "ready": bool(r)}
        for s, n, t, d, r in conn.execute(INVALID_INDEXES_SQL).fetchall()
    ]
