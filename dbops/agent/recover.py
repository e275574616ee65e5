"""Expected fingerprints per revision on a scratch database, and the stamp. (Issue 5.)

- ``recover.inspect``: the live database (fingerprint, version rows, server version) and the
  revision history (topological order, a sha256 of each revision file and of env.py), which
  the host turns into a cache key.
- ``recover.expected``: one linear pass on a scratch database created on the same server:
  upgrade one revision at a time from base with alembic's command API (env.py pointed at the
  scratch database through ``db.pointed_at`` and ``guard.aimed_config``, every connection
  checked by ``guard.scratch_step``) and fingerprint after each step. The live database is
  never written (read back after the pass); the scratch database is always dropped.
- ``recover.stamp``: under the dbops lock, re-check that nothing moved since the analysis,
  then ``alembic stamp --purge`` to the matching revision(s), committed on the host's word
  (the commit handshake, dbops/agent/lifeline.py). Changes no schema.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from pathlib import Path

from alembic import command
from alembic.runtime.environment import EnvironmentContext

from dbops.agent import db, fingerprint, guard, lifeline_hooks, scratch, version_table
from dbops.agent.db import one_line
from dbops.agent.lock import require_lock
from dbops.agent.protocol import AgentFailure, handler


def file_sha256(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def chain(script) -> list[dict]:
    """Every revision, base first (a topological order), with the sha256 of its file."""
    out = []
    for rev in reversed(list(script.walk_revisions())):
        down = rev.down_revision
        downs = [] if down is None else ([down] if isinstance(down, str) else sorted(down))
        out.append(
            {
                "revision": rev.revision,
                "down_revisions": downs,
                "message": (rev.doc or "").strip().splitlines()[0] if rev.doc else "",
                "file": Path(rev.path).name if rev.path else None,
                "sha256": file_sha256(rev.path),
            }
        )
    return out


@contextlib.contextmanager
def quiet_alembic():
    """alembic's INFO lines ("Running upgrade …") for 50 scratch steps are noise."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def version_table_exists(conn) -> bool:
    """The version table (DBOPS_VERSION_TABLE, found as alembic finds it: on the search_path
    when not schema-qualified) exists."""
    found = conn.execute("SELECT to_regclass(%s)", [version_table.regclass_text()]).fetchone()
    return found[0] is not None


CONFLICT_MARKER = re.compile(r"^(<<<<<<<|=======|>>>>>>>)( |$)")


def script_failure(ctx, exc: BaseException) -> AgentFailure:
    """A script directory that cannot be read (a revision file that does not parse, e.g. with
    merge-conflict markers committed; an import error; a broken chain) as an AgentFailure of
    kind "script" naming the file, the line and the conflict markers found."""
    path = getattr(exc, "filename", None)
    line = getattr(exc, "lineno", None)
    if path is None:  # an ImportError or NameError inside a revision file: find it in the traceback
        tb = exc.__traceback__
        versions = str(Path(ctx.script().versions).resolve()) if _safe_versions(ctx) else None
        while tb is not None:
            f = tb.tb_frame.f_code.co_filename
            if versions and f.startswith(versions):
                path, line = f, tb.tb_lineno
            tb = tb.tb_next
    markers = []
    if path:
        try:
            markers = [
                i
                for i, ln in enumerate(Path(path).read_text(errors="replace").splitlines(), 1)
                if CONFLICT_MARKER.match(ln)
            ]
        except OSError:
            pass
    what = type(exc).__name__ + ": " + (getattr(exc, "msg", None) or one_line(exc))
    where = f"{path}" + (f", line {line}" if line else "") if path else "the script directory"
    why = f"merge-conflict markers at line(s) {', '.join(map(str, markers))}" if markers else what
    return AgentFailure(
        f"the revision scripts cannot be read: {where}: {why}",
        kind="script",
        file=path,
        line=line,
        conflict_markers=markers,
        error=what,
    )


def _safe_versions(ctx) -> bool:
    try:
        return bool(ctx.script().versions)
    except Exception:
        return False


@handler("recover.inspect")
def inspect(ctx) -> dict:
    script = ctx.script()
    try:
        history = chain(script)
    except Exception as exc:
        raise script_failure(ctx, exc) from None
    try:
        conn = ctx.conn
        server, num = conn.execute(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
        ).fetchone()
    except Exception as exc:
        raise AgentFailure(
            f"cannot connect to database {db.database()}: {one_line(exc)}", kind="connect"
        ) from None
    has_table = version_table_exists(conn)
    try:
        with quiet_alembic():
            current = ctx.current_heads() if has_table else []
    except Exception as exc:
        raise AgentFailure(f"cannot read alembic_version: {one_line(exc)}", kind="read") from None
    fp = fingerprint.collect(conn)
    env_py = Path(script.dir) / "env.py"
    return {
        "database": db.database(),
        "server_version": server,
        "server_major": num // 10000,
        "version_table": has_table,
        "current": current,
        "heads": sorted(script.get_heads()),
        "chain": history,
        "env_sha256": file_sha256(str(env_py)),
        "live": {
            "fingerprint": fp,
            "hash": fingerprint.digest(fp),
            "summary": fingerprint.summary(fp),
        },
    }


def passes(script) -> list[list[str]]:
    """One linear pass per head: that head's ancestors, base first. With a single head (the
    usual case) this is the whole history once; a branched history costs one more scratch
    database per extra head, so every head's states are seen on their own."""
    out = []
    for head in sorted(script.get_heads()):
        out.append([r.revision for r in reversed(list(script.iterate_revisions(head, "base")))])
    return out or [[]]


def upgrade_one(cfg, script, rev: str) -> None:
    """``alembic upgrade REV`` as alembic.command.upgrade does it, but with one ScriptDirectory
    for the whole pass (command.upgrade re-reads every revision file on each call: quadratic)."""

    def fn(current, _context):
        return script._upgrade_revs(rev, current)

    with EnvironmentContext(
        cfg, script, fn=fn, as_sql=False, starting_rev=None, destination_rev=rev, tag=None
    ):
        script.run_env()


def scratch_heads(ctx, sconn, name: str) -> tuple[str, ...]:
    """The scratch database's version rows: read on the open connection (one connection less
    per step); through alembic's MigrationContext when the version table is elsewhere."""
    try:
        with sconn.transaction():
            return tuple(db.version_rows(sconn))
    except Exception:
        with quiet_alembic():
            return tuple(ctx.current_heads(name))


def build_expected(ctx, purpose: str = "recover") -> dict:
    """Fingerprint of base and of the database after each revision, one step at a time."""
    script = ctx.script()
    started = time.monotonic()
    steps: list[dict] = []
    seen: set[tuple[str, ...]] = set()
    for revs in passes(script):
        try:
            scratch_cm = scratch.scratch_database(purpose)
            name = scratch_cm.__enter__()
        except Exception as exc:
            raise AgentFailure(
                f"cannot create a scratch database on the server to build the "
                f"expected schemas: {one_line(exc)}",
                kind="scratch",
            ) from None
        with contextlib.ExitStack() as stack:
            stack.push(scratch_cm)
            with (
                db.pointed_at(name),
                quiet_alembic(),
                guard.scratch_step(name, "building the expected schemas"),
            ):
                sconn = db.connect(name, application_name="dbops:recover scratch")
                try:
                    if () not in seen:
                        fp = fingerprint.collect(sconn)
                        steps.append(
                            {
                                "revision": None,
                                "heads": [],
                                "hash": fingerprint.digest(fp),
                                "fingerprint": fp,
                            }
                        )
                        seen.add(())
                    for rev in revs:
                        try:
                            with guard.aimed_config(ctx, name) as cfg:
                                upgrade_one(cfg, script, rev)
                        except Exception as exc:
                            raise AgentFailure(
                                f"building the expected schemas: upgrading a scratch database "
                                f"to {rev} failed: {one_line(exc)}",
                                kind="expected",
                                revision=rev,
                            ) from None
                        heads = scratch_heads(ctx, sconn, name)
                        if heads in seen:
                            continue
                        fp = fingerprint.collect(sconn)
                        steps.append(
                            {
                                "revision": rev,
                                "heads": list(heads),
                                "hash": fingerprint.digest(fp),
                                "fingerprint": fp,
                            }
                        )
                        seen.add(heads)
                finally:
                    sconn.close()
    return {"steps": steps, "seconds": round(time.monotonic() - started, 3)}


@handler("recover.expected")
def expected(ctx) -> dict:
    return build_expected(ctx)


@handler("recover.stamp")
def stamp(
    ctx,
    revisions: list[str],
    expect_current: list[str],
    expect_hash: str,
    lock_timeout: str = "2s",
    handshake: bool = False,
) -> dict:
    """Stamp (purging the version rows first) after checking nothing moved meanwhile. With
    ``handshake`` the rewrite commits only after the host said so (lifeline)."""
    require_lock(ctx)
    conn = ctx.conn
    has_table = version_table_exists(conn)
    with quiet_alembic():
        before = ctx.current_heads() if has_table else []
    if sorted(before) != sorted(expect_current):
        raise AgentFailure(
            f"alembic_version changed during recover (now {before or ['none']}, "
            f"was {expect_current or ['none']}): nothing stamped",
            kind="moved",
            before=before,
        )
    live_hash = fingerprint.digest(fingerprint.collect(conn))
    if live_hash != expect_hash:
        raise AgentFailure(
            "the live schema changed during recover: nothing stamped", kind="moved", before=before
        )
    targets = [r for r in revisions if r] or ["base"]
    gate = {"stamp_to": [r for r in revisions if r]} if handshake else None
    try:
        with (
            db.pg_options(lock_timeout=lock_timeout),
            lifeline_hooks.commit_gate(gate),
            quiet_alembic(),
            guard.expecting(db.database(), "recover --apply (stamp)"),
        ):
            cfg = guard.aim(ctx.config(), db.database())
            command.stamp(cfg, targets if len(targets) > 1 else targets[0], purge=True)
    except guard.WrongDatabase:
        raise
    except Exception as exc:
        raise AgentFailure(
            f"stamp failed: {one_line(exc)}",
            kind="stamp",
            before=before,
            after=ctx.current_heads() if version_table_exists(conn) else [],
        ) from None
    with quiet_alembic():
        after = ctx.current_heads()
    return {"before": before, "before_table": has_table, "after": after}
