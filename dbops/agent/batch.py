"""DB side of a migrate over many revisions: ONE alembic run (one env.py execution, one
connection, one load of the script directory) for every pending revision, still one
transaction per revision.

migration._step runs `command.upgrade` once per revision: env.py, its engine and every revision
file are loaded again for each (3.4x bare `alembic upgrade head` on 35 revisions). Here the
env.py's own ``context.configure(...)`` is given two of alembic's documented options for the
duration of the run, whatever the env.py passes:
- ``transaction_per_migration=True``: each revision commits on its own (a failure leaves the
  database at the last revision that completed, as with one run per revision; a SQLAlchemy
  commit event fires once per revision);
- ``on_version_apply``: after each revision, inside its transaction (before it commits), the
  version row is read back on the migration's own connection and must name that revision; the
  next revision's application_name is set; the revision's time is recorded.
lock_timeout / statement_timeout reach the connection through PGOPTIONS (db.pg_options). A
failure answers with the revisions completed and the one that failed, in migration._step's
terms, so the host retries a lock timeout one revision at a time from there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from alembic import command

from dbops.agent import db, guard, lifeline_hooks, version_table
from dbops.agent.lifeline import LIFELINE
from dbops.agent.lock import require_lock
from dbops.agent.migration import (
    classified,
    configure_with,
    drop_new_invalid,
    invalid_indexes,
    quiet,
    sqlstate,
    whole,
)
from dbops.agent.plan import check_current_known, uses_autocommit_block
from dbops.agent.protocol import AgentFailure, handler
from dbops.agent.status import applied_set


class VersionRowNotMoved(Exception):
    """Raised inside a revision's transaction: it rolls that revision back."""


class OneTransaction(Exception):
    """env.py holds a transaction of its own around the run (a statement or begin() before
    context.configure): alembic then commits every revision at the end, together. Raised at
    the first revision, before anything committed: the host goes one revision per run."""


@handler("batch.upgrade")
def upgrade(ctx, **kw) -> dict:
    with quiet():
        return _upgrade(ctx, **kw)


def _upgrade(
    ctx,
    revisions: list[str],
    target: str,
    lock_timeout: str = "2s",
    statement_timeout: str = "0",
    handshake: bool = False,
) -> dict:
    """Apply ``revisions`` (the pending ones, in order, ending at ``target``) in one alembic
    run, one transaction each. Returns {"steps": [...], "after": [...]}, each step as
    migration._step reports it."""
    require_lock(ctx)
    script = ctx.script()
    before = ctx.current_heads()
    check_current_known(script, before)
    transactional = {r: not uses_autocommit_block(script.get_revision(r)) for r in revisions}
    if handshake and not all(transactional.values()):  # the host records those before each
        return {"steps": [], "after": before, "not_transactional": True, "seconds": 0.0}
    gate: dict = {}  # the revision whose transaction commits next (set by on_version_apply)
    invalid_before = invalid_indexes(ctx)
    expected_db = db.database()
    steps: list[dict] = []
    where: dict[str, str] = {}
    mark = [time.monotonic()]
    t0 = mark[0]

    def on_version_apply(**kw) -> None:
        """After each revision, before its transaction commits (alembic calls it with
        ctx=MigrationContext, step=MigrationInfo, heads, run_args)."""
        migration_ctx, info = kw["ctx"], kw["step"]
        if getattr(migration_ctx, "_in_external_transaction", False):
            raise OneTransaction()
        for revision in info.up_revision_ids:
            if revision not in revisions:
                continue
            rows = sorted(migration_ctx.get_current_heads())
            if revision not in applied_set(script, rows):
                raise VersionRowNotMoved(revision, rows)
            conn = migration_ctx.connection
            if not where:
                where.update(_address(conn))
            now = time.monotonic()
            gate.update(revision=revision, direction="up")
            steps.append(
                {
                    "revision": revision,
                    "before": list(steps[-1]["after"]) if steps else before,
                    "after": rows,
                    "skipped": False,
                    "transactional": transactional[revision],
                    "seconds": round(now - mark[0], 3),
                }
            )
            mark[0] = now
            following = revisions[len(steps)] if len(steps) < len(revisions) else None
            if following is not None and transactional[revision]:
                _set_appname(conn, following)

    saved_app = os.environ.get("PGAPPNAME")
    os.environ["PGAPPNAME"] = _appname(revisions[0])
    try:
        with (
            db.pg_options(
                lock_timeout=lock_timeout,
                statement_timeout=statement_timeout,
                **lifeline_hooks.client_check(ctx),
            ),
            _commit_gate(gate if handshake else None),
            configure_with(transaction_per_migration=True, on_version_apply=on_version_apply),
            guard.expecting(expected_db, f"upgrade to {target}"),
        ):
            command.upgrade(guard.aim(ctx.config(), expected_db), target)
    except (guard.WrongDatabase, version_table.Mismatch) as exc:  # nothing ran there: the
        # state is read, not assumed
        exc.details.update(
            revision=revisions[0], direction="up", before=before, after=ctx.current_heads()
        )
        raise
    except OneTransaction:
        return {
            "steps": [],
            "after": ctx.current_heads(),
            "one_transaction": True,
            "seconds": round(time.monotonic() - t0, 3),
        }
    except Exception as exc:
        raise _failure(
            ctx,
            exc,
            revisions,
            steps,
            before,
            transactional,
            invalid_before,
            lock_timeout,
            statement_timeout,
            round(time.monotonic() - mark[0], 3),
        ) from None
    finally:
        if saved_app is None:
            os.environ.pop("PGAPPNAME", None)
        else:
            os.environ["PGAPPNAME"] = saved_app
    after = ctx.current_heads()
    if not steps or target not in applied_set(script, after):
        raise AgentFailure(
            elsewhere_message(target, after, expected_db, where),
            kind="verify",
            revision=target,
            before=before,
            after=after,
            completed=steps,
            connected_to=where,
        )
    return {"steps": steps, "after": after, "seconds": round(time.monotonic() - t0, 3)}


@contextlib.contextmanager
def _commit_gate(gate: dict | None) -> Iterator[None]:
    """The commit handshake in one run: a commit that follows a revision's on_version_apply
    (its transaction) first asks the host (lifeline); any other commit (alembic's version
    table, env.py's own) is not a revision's and goes on. None: no gate."""
    if gate is None:
        yield
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def ask(_conn) -> None:
        if gate.get("revision"):
            what = dict(gate)
            gate.clear()
            LIFELINE.ask_commit(what)

    event.listen(Engine, "commit", ask)
    try:
        yield
    finally:
        event.remove(Engine, "commit", ask)


def _appname(revision: str) -> str:
    return f"dbops:migrate {revision}"[:63]


def _set_appname(conn, revision: str) -> None:
    from sqlalchemy import text

    conn.execute(
        text("SELECT set_config('application_name', :v, false)"), {"v": _appname(revision)}
    )


def _address(conn) -> dict[str, str]:
    """Which database and server the migration's connection is on."""
    from sqlalchemy import text

    try:
        row = conn.execute(
            text(
                "SELECT current_database(), coalesce(host(inet_server_addr()), 'local socket'), "
                "coalesce(inet_server_port()::text, '')"
            )
        ).one()
    except Exception:
        return {}
    return {"database": row[0], "server": row[1], "port": row[2]}


def elsewhere_message(revision: str, after: list[str], expected_db: str, where: dict) -> str:
    """The version row dbops reads did not move although alembic ran: env.py connected to
    another database than the one dbops works on."""
    seen = (
        f"env.py's connection was on database {where.get('database')} at "
        f"{where.get('server')}:{where.get('port')}"
        if where
        else "alembic applied nothing"
    )
    return (
        f"{revision}: alembic finished but the version row of {expected_db} says "
        f"{after or ['base']}: {seen}; env.py must connect where dbops points it "
        f"(DATABASE_URL / POSTGRES_* in its environment)"
    )


def _failure(
    ctx,
    exc: BaseException,
    revisions: list[str],
    steps: list[dict],
    before: list[str],
    transactional: dict[str, bool],
    invalid_before: set[str],
    lock_timeout: str,
    statement_timeout: str,
    seconds: float,
) -> AgentFailure:
    """The failure of the revision in progress, in migration._step's terms, plus the
    revisions this run completed (committed) before it."""
    done = {s["revision"] for s in steps}
    revision = next((r for r in revisions if r not in done), revisions[-1])
    after = ctx.current_heads()
    if isinstance(exc, VersionRowNotMoved):
        return AgentFailure(
            f"{revision}: the upgrade ran but the version row on env.py's connection says "
            f"{exc.args[1] or ['base']}: rolled back",
            kind="verify",
            revision=revision,
            before=before,
            after=after,
            completed=steps,
            transactional=transactional[revision],
        )
    state = sqlstate(exc)
    is_tx = transactional[revision]
    dropped = [] if is_tx else drop_new_invalid(ctx, invalid_before, lock_timeout)
    details = dict(
        revision=revision,
        direction="up",
        before=steps[-1]["after"] if steps else before,
        after=after,
        transactional=is_tx,
        seconds=seconds,
        sqlstate=state,
        attempt=1,
        dropped_invalid_indexes=dropped,
        invalid_indexes=sorted(invalid_indexes(ctx)),
        completed=steps,
    )
    return classified(ctx, exc, lock_timeout, statement_timeout, whole(exc), details)
