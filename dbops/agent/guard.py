"""Where a step's connections really go (issue 23): the connection guard.

dbops aims a project's env.py at a scratch database by construction where it can (the Config
it builds carries ``sqlalchemy.url`` and, for env.py files that read it, an open connection in
``config.attributes["connection"]``; POSTGRES_DB / DATABASE_URL / PGDATABASE are pointed too:
``db.pointed_at``). An env.py that takes its URL from anywhere else (its own variable, a
settings object built at import) would still reach the live database. So, while a step is
meant for database X:

- ``expecting(X)``: every NEW connection any code opens in this process (SQLAlchemy's
  class-level pool events ``first_connect``/``connect``, which fire for every engine, sync or
  async, before the dialect's own first query; and ``db.connect`` to X) is identified on the
  server — ``current_database()``, ``pg_postmaster_start_time()`` and the server's port, with
  its address for the message — and compared with what dbops' own connection to X reads. A
  mismatch closes that connection before the caller's first statement and the step ends with
  ``WrongDatabase`` (kind "wrong_database"), one line naming where env.py connected, what
  dbops meant, and the fix (README "Your own project"). The refusal is raised again when the
  block ends, so code that catches every exception (a rehearsed revision's failure, a touched
  set's fallback) cannot turn it into an ordinary result.
- ``live_unchanged(step)``: the live database's version rows and schema fingerprint read
  before and after a scratch or read-only step; a change fails loudly (kind "live_changed").
- ``aimed_config(ctx, X)``: the Config for a step on X (``sqlalchemy.url`` set, % escaped for
  configparser; the shared connection in ``attributes`` when ``share``).
- ``scratch_step(X, step)``: the three together, what every scratch step uses.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbops.agent import db, version_table
from dbops.agent.protocol import AgentFailure

if TYPE_CHECKING:
    from alembic.config import Config

IDENTITY_SQL = (
    "SELECT current_database(), pg_postmaster_start_time()::text, current_setting('port'), "
    "host(inet_server_addr()), inet_server_port()"
)
README_FIX = (
    "make env.py use the connection or URL dbops gives it: "
    "config.attributes.get('connection'), else config.get_main_option('sqlalchemy.url') "
    "(README: Your own project)"
)


@dataclass(frozen=True)
class Where:
    """A connection's database and server, as the server itself says."""

    database: str
    started: str  # pg_postmaster_start_time: tells two servers apart
    port: str  # the server's own port (current_setting), whatever path the client took
    addr: str | None  # inet_server_addr(): NULL over a unix socket
    addr_port: int | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.database, self.started, self.port)

    def describe(self) -> str:
        where = f"{self.addr}:{self.addr_port}" if self.addr else f"unix socket, port {self.port}"
        return f"database {self.database!r} on {where}"


class WrongDatabase(AgentFailure):
    def __init__(self, got: Where, meant: Where, step: str):
        super().__init__(
            f"{step}: env.py connected to {got.describe()}, but dbops meant "
            f"{meant.describe()}; stopped before its first statement: {README_FIX}",
            kind="wrong_database",
            connected_to=got.__dict__,
            expected=meant.__dict__,
            step=step,
        )


def identify_dbapi(dbapi_conn) -> Where:
    """Identify a DBAPI connection (psycopg's, or SQLAlchemy's async adaptation of one: its
    cursor is driven synchronously inside the greenlet the pool event runs in); leaves no
    transaction open."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute(IDENTITY_SQL)
        row = cur.fetchone()
    finally:
        cur.close()
    if not getattr(dbapi_conn, "autocommit", False):
        dbapi_conn.rollback()
    return Where(str(row[0]), str(row[1]), str(row[2]), row[3], row[4])


_serial = itertools.count(1)


class Expectation:
    def __init__(self, dbname: str, step: str):
        self.dbname, self.step = dbname, step
        self.serial = next(_serial)  # a pooled connection is checked again in each new step
        with db.connect(dbname, application_name=f"dbops:guard {step}"[:63]) as conn:
            self.meant = identify_dbapi(conn)  # dbops' own connection, asked by name
        self.seen: list[Where] = []
        self.violation: WrongDatabase | None = None

    def check(self, dbapi_conn) -> None:
        got = identify_dbapi(dbapi_conn)
        self.seen.append(got)
        if got.key != self.meant.key:
            with contextlib.suppress(Exception):
                dbapi_conn.close()
            self.violation = WrongDatabase(got, self.meant, self.step)
            raise self.violation


_active: Expectation | None = None
_mutex = threading.Lock()
_installed = False


def active() -> Expectation | None:
    return _active


def _on_pool_connect(dbapi_conn, record, *_proxy) -> None:
    exp = _active
    if exp is None or record is None or record.info.get("dbops_guard") == exp.serial:
        return
    record.info["dbops_guard"] = exp.serial
    exp.check(dbapi_conn)


def install() -> None:
    """Listen on every SQLAlchemy pool (class level: every engine, created before or after,
    sync or async). ``first_connect`` runs before the dialect's first queries on a new engine,
    ``connect`` covers every later connection, ``checkout`` a pooled one opened in an earlier
    step (an engine env.py made at import); a connection is checked once per step."""
    global _installed
    if _installed:
        return
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    version_table.install()  # env.py's version_table against DBOPS_VERSION_TABLE, at configure
    event.listen(Pool, "first_connect", _on_pool_connect, insert=True)
    event.listen(Pool, "connect", _on_pool_connect, insert=True)
    event.listen(Pool, "checkout", _on_pool_connect, insert=True)
    _installed = True


def check_psycopg(conn, dbname: str) -> None:
    """db.connect's hook: a connection dbops opens to the guarded database is identified too."""
    exp = _active
    if exp is not None and dbname == exp.dbname:
        exp.check(conn)


@contextlib.contextmanager
def expecting(dbname: str, step: str) -> Iterator[Expectation]:
    """While the block runs, every new connection must reach ``dbname`` on dbops' server."""
    global _active
    install()
    exp = Expectation(dbname, step)
    with _mutex:
        if _active is not None:
            raise AgentFailure(
                f"internal: {step} on {dbname} inside {_active.step} on {_active.dbname}",
                kind="internal",
            )
        _active = exp
    try:
        yield exp
    except BaseException:
        if exp.violation is not None:
            raise exp.violation from None
        raise
    finally:
        with _mutex:
            _active = None
    if exp.violation is not None:  # swallowed by the code in the block: raised here
        raise exp.violation


# --- the live database, read back -------------------------------------------------------------
def live_state(conn) -> dict:
    from dbops.agent import fingerprint

    return {
        "version": db.version_rows(conn),
        "schema": fingerprint.digest(fingerprint.collect(conn)),
    }


@contextlib.contextmanager
def live_unchanged(step: str) -> Iterator[None]:
    """The live version rows and schema fingerprint are the same after the block, or the step
    fails loudly (whatever the block raised). Read on a connection of its own, opened to the
    live database by name (a handler's lazy ``ctx.conn``, first opened inside
    ``db.pointed_at``, would reach the scratch database). A live database that cannot be read
    at all (``invoke check`` in CI may have none) is not compared: env.py cannot reach it."""
    live = db.live_database()
    try:
        conn = db.connect(live, application_name=f"dbops:guard read-back {step}"[:63])
        before = live_state(conn)
    except Exception as exc:  # noqa: BLE001 - said, and the step runs guarded all the same
        print(f"dbops: the live database is not read back after {step}: {db.one_line(exc)}")
        yield
        return
    failed = None
    try:
        yield
    except BaseException as exc:
        failed = exc
    try:
        after = live_state(conn)
    finally:
        conn.close()
    if after != before:
        what = (
            f"its version rows went from {before['version'] or ['base']} to "
            f"{after['version'] or ['base']}"
            if after["version"] != before["version"]
            else "its schema changed"
        )
        raise AgentFailure(
            f"{step} was meant for a scratch database but the LIVE database "
            f"{live} changed: {what}. Stop and read its state (invoke doctor); "
            f"{README_FIX}",
            kind="live_changed",
            before=before,
            after=after,
            step=step,
        ) from failed
    if failed is not None:
        raise failed


# --- the Config a step on a database gets ------------------------------------------------------
def url_for(cfg: Config, dbname: str) -> str:
    """dbops' URL for ``dbname``, with the project's own PostgreSQL driver when alembic.ini
    names one (an async env.py needs its async driver)."""
    from sqlalchemy.engine import make_url

    url = db.sa_url(dbname)
    own = cfg.get_main_option("sqlalchemy.url")
    try:
        driver = make_url(own).drivername if own else None
    except Exception:  # a placeholder alembic.ini ("driver://user:pass@localhost/dbname")
        driver = None
    if driver and driver.startswith("postgresql"):
        url = url.set(drivername=driver)
    return url.render_as_string(hide_password=False)


def aim(cfg: Config, dbname: str) -> Config:
    """``sqlalchemy.url`` of ``cfg`` set to ``dbname`` (configparser reads % as interpolation)."""
    cfg.set_main_option("sqlalchemy.url", url_for(cfg, dbname).replace("%", "%%"))
    return cfg


@contextlib.contextmanager
def aimed_config(ctx, dbname: str, *, share: bool = True) -> Iterator[Config]:
    """A fresh Config for one alembic command on ``dbname``: ``sqlalchemy.url`` set and, with
    ``share``, an open connection to it in ``attributes["connection"]`` (alembic's cookbook
    pattern; env.py files that do not read it are checked by ``expecting``). Opened inside the
    caller's PGOPTIONS/PGAPPNAME, committed and closed after the command."""
    cfg = aim(ctx.config(), dbname)
    if not share:
        yield cfg
        return
    engine = db.engine(dbname)
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            yield cfg
            if conn.in_transaction():
                conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def scratch_step(dbname: str, step: str) -> Iterator[Expectation]:
    """A scratch or read-only step on ``dbname``: guarded, and the live database read back."""
    with live_unchanged(step), expecting(dbname, step) as exp:
        yield exp
