"""invoke doctor against real PostgreSQL: each planted problem is named, with the right
next command; what cannot be answered is "unknown", never a crash."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import psycopg
import pytest

from dbops.agent_client import AgentError
from dbops.ops import doctor as doctor_op
from tests.conftest import ROOT
from tests.fixtures.doctor import run_next
from tests.fixtures.projects import BRANCH_REV
from tests.fixtures.projects import SAMPLE_HEAD as HEAD
from tests.fixtures.projects import SAMPLE_REVS as REVS

# Every check, in the order of doctor's CHECKS, its docstring and docs/recovery.md.
CHECK_NAMES = [
    "connectivity",
    "dbops lock",
    "indexes",
    "revision files",
    "isolation",
    "schema",
    "heads",
    "sessions",
    "pg_dump",
    "models",
    "revision",
    "scratch",
    "rehearsal",
    "backups",
    "schedule",
    "archiving",
    "restore drill",
    "audit",
]
QUIET_WHEN_FINE = ("scratch", "rehearsal")  # no row at all when there is nothing to say
QUIET_WHEN_FINE += ("archiving",)  # WAL archiving off and no pitr-enable: nothing to say


@pytest.fixture
def doc(invoke, recover_cache):
    def run(*args, env=None):
        done = invoke(
            "doctor", "--json", *args, env={"DBOPS_CACHE_DIR": str(recover_cache), **(env or {})}
        )
        assert done.stdout.strip(), done.stderr  # never a crash
        rep = json.loads(done.stdout)
        rep["rc"] = done.returncode
        rep["by"] = {c["name"]: c for c in rep["checks"]}
        return rep

    return run


@pytest.fixture
def backend_copy(tmp_path):
    dst = tmp_path / "backend"
    shutil.copytree(ROOT / "backend", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_healthy_database_after_migrate_says_nothing_to_do(doc, invoke, pg_major):
    assert invoke("migrate").returncode == 0  # takes a verified backup, writes the audit record
    rep = doc()
    assert rep["rc"] == 0
    assert [(c["name"], c["status"]) for c in rep["checks"]] == [
        (n, "ok") for n in CHECK_NAMES if n not in QUIET_WHEN_FINE
    ]
    assert rep["next"] == "nothing to do"
    from dbops import pgbin  # this run's pg_dump (13 and 14 run with 15's client tools)

    dump_version = pgbin.version(pgbin.bindir(), "pg_dump")[1]
    assert f"PostgreSQL {pg_major}." in rep["by"]["connectivity"]["summary"]
    assert f"pg_dump {dump_version}" in rep["by"]["connectivity"]["summary"]


def test_pending_revisions_and_the_human_screen(doc, alembic_at, invoke, recover_cache):
    alembic_at(REVS[2])
    rep = doc()
    assert rep["by"]["revision"]["status"] == "warn"
    assert rep["pending"] == REVS[3:] and rep["next"] == "invoke migrate"
    assert rep["by"]["schema"]["status"] == "ok"
    assert rep["by"]["backups"]["status"] == "warn"  # none yet: migrate will take one
    done = invoke("doctor", env={"DBOPS_CACHE_DIR": str(recover_cache)})
    screen = done.stdout
    assert screen.splitlines()[-1].startswith("next: invoke migrate")
    assert done.stderr.count("-m dbops.agent") == 1  # one agent process for all of it
    assert len(screen.splitlines()) <= 30


def test_unknown_version_id(doc, alembic_at, db_conn):
    alembic_at(REVS[3])
    db_conn.execute("UPDATE alembic_version SET version_num = 'badc0ffee000'")
    rep = doc()
    assert rep["rc"] == 1 and rep["by"]["revision"]["status"] == "fail"
    assert "badc0ffee000" in rep["by"]["revision"]["summary"]
    assert f"matches {REVS[3]} exactly" in rep["by"]["schema"]["summary"]
    assert rep["next"] == "invoke recover"


def test_populated_database_without_alembic_version(doc, alembic_at, db_conn):
    alembic_at(REVS[1])
    db_conn.execute("DROP TABLE alembic_version")
    rep = doc()
    assert "no alembic_version table" in rep["by"]["revision"]["summary"]
    assert rep["next"] == "invoke recover"


def test_invalid_index_from_a_failed_concurrent_build(doc, alembic_at, db_conn, invoke):
    alembic_at("head")
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'a', 'a@x')")
    db_conn.execute("INSERT INTO posts (id, title, content, author_id) VALUES (1, 't', 'c', 1)")
    db_conn.execute(
        "INSERT INTO comments (content, author_name, author_email, post_id) "
        "VALUES ('x', 'same', 'e', 1), ('y', 'same', 'e', 1)"
    )
    with pytest.raises(psycopg.errors.UniqueViolation):
        db_conn.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY uq_comments_author ON comments (author_name)"
        )
    rep = doc()
    assert rep["by"]["indexes"]["status"] == "fail"
    assert "uq_comments_author on comments" in rep["by"]["indexes"]["summary"]
    assert rep["next"].startswith("invoke psql ") and rep["next"].endswith(
        "-c 'DROP INDEX CONCURRENTLY IF EXISTS public.uq_comments_author'"
    )
    # The next command, run as printed, fixes it.
    done = invoke(*shlex.split(rep["next"])[1:])
    assert done.returncode == 0, done.stderr
    assert doc()["by"]["indexes"]["status"] == "ok"


def count(db_conn, table):
    return db_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_only_sessions_whose_locks_conflict_are_blockers(
    doc, alembic_at, pg_cluster, database, invoke, db_conn
):
    alembic_at(REVS[2])  # pending: 23cd436768a8 CREATE INDEX on comments (ShareLock), then two
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'a', 'a@x')")
    console = pg_cluster.connect(database, application_name="console", autocommit=False)
    with pg_cluster.connect(database, application_name="reporting-job", autocommit=False) as report:
        report.execute("SELECT count(*) FROM comments")  # AccessShareLock: CREATE INDEX passes
        console.execute("LOCK TABLE comments IN ROW EXCLUSIVE MODE")  # as an UPDATE would
        harmless, blocker = report.info.backend_pid, console.info.backend_pid
        rep = doc()
        s = rep["by"]["sessions"]
        assert s["status"] == "fail" and s["blockers"] == [blocker]
        assert "comments: ShareLock" in s["summary"]
        assert any(
            f"pid {blocker} 'console'" in d
            and "RowExclusiveLock on comments (conflicts with ShareLock)" in d
            for d in s["details"]
        )
        assert any(
            f"pid {harmless} 'reporting-job'" in d and "no conflict" in d for d in s["details"]
        )
        assert rep["next"].startswith(
            f"invoke psql -c 'SELECT pg_terminate_backend({blocker})'   "
            "# after checking who owns it"
        )
        assert run_next(invoke, rep).returncode == 0
        console.close()
        rep = doc()  # the reporting job is still there, and harmless
        assert rep["by"]["sessions"]["status"] != "fail" and rep["next"] == "invoke migrate"
        assert invoke("migrate").returncode == 0  # beside the open SELECT transaction
        report.rollback()
    rep = doc()
    assert rep["rc"] == 0 and rep["next"] == "nothing to do", rep["next"]
    assert count(db_conn, "users") == 1


def test_a_select_does_block_an_add_column(doc, alembic_at, pg_cluster, database):
    alembic_at(REVS[1])  # pending: 1be15b655bdb ALTER TABLE users ADD COLUMN (AccessExclusive)
    with pg_cluster.connect(database, application_name="reporting-job", autocommit=False) as report:
        report.execute("SELECT count(*) FROM users")
        pid = report.info.backend_pid
        rep = doc()
        report.rollback()
    s = rep["by"]["sessions"]
    assert s["status"] == "fail" and s["blockers"] == [pid]
    assert "AccessShareLock on users (conflicts with AccessExclusiveLock)" in " ".join(s["details"])


def test_a_running_pg_dump_gets_wait_not_terminate(
    doc, alembic_at, pg_cluster, database, invoke, db_conn
):
    alembic_at(REVS[1])  # pending: ALTER TABLE users (AccessExclusive) conflicts with the dump's
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'a', 'a@x')")
    with pg_cluster.connect(database, application_name="pg_dump", autocommit=False) as dump:
        dump.execute(
            "SELECT count(*) FROM users"
        )  # AccessShareLock, as pg_dump takes on every table
        pid = dump.info.backend_pid
        rep = doc()
        assert rep["by"]["sessions"]["blockers"] == []  # not offered for termination
        assert rep["by"]["pg_dump"]["status"] == "warn"
        assert "its locks conflict with the pending migrations" in rep["by"]["pg_dump"]["summary"]
        assert rep["next"] == f"invoke migrate   # after pg_dump pid {pid} finishes"
        dump.commit()  # the dump finishes
    assert run_next(invoke, rep).returncode == 0
    rep = doc()
    assert rep["next"] == "nothing to do" and count(db_conn, "users") == 1


def test_a_pg_dump_that_blocks_nothing_is_not_waited_for(doc, alembic_at, pg_cluster, database):
    alembic_at(REVS[2])  # pending: CREATE INDEX (ShareLock) does not conflict with AccessShare
    with pg_cluster.connect(database, application_name="pg_dump", autocommit=False) as dump:
        dump.execute("SELECT count(*) FROM comments")
        rep = doc()
        dump.rollback()
    assert "does not block the pending migrations" in rep["by"]["pg_dump"]["summary"]
    assert rep["next"] == "invoke migrate"


def test_several_heads_name_the_merge_command(doc, alembic_at, backend_copy):
    ini = backend_copy / "alembic.ini"
    alembic_at("head", ini=ini)
    (backend_copy / "alembic" / "versions" / "b0a1c2d3e4f5_add_tag_colour.py").write_text(
        BRANCH_REV
    )
    rep = doc(env={"DBOPS_ALEMBIC_INI": str(ini)})
    assert rep["by"]["heads"]["status"] == "fail"
    assert sorted(rep["heads"]) == sorted(["b0a1c2d3e4f5", HEAD])
    assert " merge -m 'merge heads' " in rep["next"] and "b0a1c2d3e4f5" in rep["next"]
    # the live schema still checks out against its own branch (one pass per head)
    assert rep["by"]["schema"]["status"] == "ok", rep["by"]["schema"]


def test_half_applied_revision_is_dirty(doc, alembic_at, db_conn, invoke):
    alembic_at(REVS[2])
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'a', 'a@x')")
    # 23cd436768a8 creates two indexes; the first got created, then the run died
    db_conn.execute("CREATE INDEX idx_comments_post_created ON comments (post_id, created_at)")
    rep = doc()
    sch = rep["by"]["schema"]
    assert sch["status"] == "fail" and sch["half_applied"] == REVS[3]
    assert f"DIRTY: revision {REVS[3]} is half-applied" in sch["summary"]
    assert "index idx_comments_post_created unexpected" in sch["details"]
    # doctor knows what was left: the exact command that removes it, then migrate
    assert rep["next"] == (
        "invoke psql -c 'DROP INDEX CONCURRENTLY IF EXISTS public.idx_comments_post_created'"
    )
    assert run_next(invoke, rep).returncode == 0
    rep = doc()
    assert rep["by"]["schema"]["status"] == "ok" and rep["next"] == "invoke migrate"
    assert invoke("migrate").returncode == 0
    rep = doc()
    assert rep["rc"] == 0 and rep["next"] == "nothing to do"
    assert count(db_conn, "users") == 1


def test_revision_file_edited_after_it_was_applied(doc, invoke, backend_copy, db_conn):
    ini = backend_copy / "alembic.ini"
    env = {"DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", "--no-backup", env=env).returncode == 0
    path = next((backend_copy / "alembic" / "versions").glob(f"{REVS[2]}_*.py"))
    path.write_text(path.read_text().replace("sa.Text()", "sa.String(length=500)"))
    rep = doc(env=env)
    rf = rep["by"]["revision files"]
    assert rf["status"] == "warn" and REVS[2] in rf["summary"]
    assert rep["next"] == f"git log -p -- {path}"


def test_unreachable_database(doc, ops_env):
    rep = doc(env={"POSTGRES_PORT": "1", "PGCONNECT_TIMEOUT": "2"})
    assert rep["rc"] == 1 and rep["by"]["connectivity"]["status"] == "fail"
    assert rep["next"] == "pg_isready -h 127.0.0.1 -p 1"


def test_unanswerable_parts_degrade_to_unknown(settings, monkeypatch):
    def unreadable(_settings):
        raise PermissionError("backups: permission denied")

    monkeypatch.setattr(doctor_op.catalog, "list_backups", unreadable)
    newest, why = doctor_op.newest_verified_backup(settings)
    assert newest is None and "could not be read" in why

    class NoHashes:  # an agent that cannot answer revisions.hashes
        def call(self, op, **kw):
            raise AgentError("unknown agent op 'revisions.hashes'", "internal", {})

    f = doctor_op.Facts(settings, None, schema=False)
    f.agent, f.raw = NoHashes(), {"connection": {"ok": True}, "status": {"history": []}}
    ch = doctor_op.revision_files(f)
    assert ch.status == "unknown" and "revisions.hashes" in ch.summary
    monkeypatch.setattr(doctor_op.catalog, "list_backups", unreadable)
    assert doctor_op.backups(f).status == "unknown"


def test_a_check_that_crashes_is_unknown_and_the_others_still_run(settings, monkeypatch):
    def broken(_f):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor_op, "CHECKS", (broken, doctor_op.audit_record))
    checks = doctor_op.run_checks(doctor_op.Facts(settings, None, schema=False))
    assert [(c.name, c.status) for c in checks] == [("broken", "unknown"), ("audit", "ok")]
    assert "RuntimeError: boom" in checks[0].summary


def test_checks_follow_the_documented_order():
    """The module docstring and docs/recovery.md list the checks in the order of CHECKS."""
    names = CHECK_NAMES
    assert [fn.__name__ for fn in doctor_op.CHECKS] == [n.replace(" ", "_") for n in names[:-1]] + [
        "audit_record"
    ]
    doc = doctor_op.__doc__
    listed = re.findall(r"^\s*\d+\. (\S+(?: lock| files| drill)?)", doc, re.M)
    assert listed == names
    text = (ROOT / "docs" / "recovery.md").read_text()
    order = text[text.index("### The next command") :]
    assert sorted(names, key=lambda n: order.index(f"**{n}**")) == names


def test_a_failed_drill_is_a_warning_with_the_drill_as_next(doc, invoke, settings):
    """doctor reads the drill record (dbops/ops/freshness.py): a failed drill is named."""
    from dbops import audit

    assert invoke("migrate").returncode == 0
    audit.append(
        settings,
        "drill",
        database=settings.database,
        result="failed",
        error="check orders.sql returned false",
    )
    rep = doc()
    drill = next(c for c in rep["checks"] if c["name"] == "restore drill")
    assert drill["status"] == "warn" and "orders.sql" in drill["summary"]
    assert rep["next"] == "invoke drill"


def test_a_killed_rehearsals_copy_is_named_and_its_command_drops_it(
    doc, invoke, pg_cluster, database
):
    """A copy nobody holds (its rehearsal was killed) is named with its size; the next command
    drops it and doctor ends healthy. Pending revisions without a rehearsal are said."""
    from dbops.agent.rehearse import prefix_for

    assert invoke("migrate").returncode == 0
    copy = prefix_for(database) + "deadbeef"
    pg_cluster.create_database(copy)
    rep = doc()
    c = rep["by"]["scratch"]
    assert (
        c["status"] == "warn" and copy in c["details"][0] and "invoke rehearse" in c["details"][0]
    )
    assert rep["next"].startswith(f"invoke psql -c 'DROP DATABASE \"{copy}\"'")
    assert run_next(invoke, rep).returncode == 0
    rep = doc()
    assert "scratch" not in rep["by"] and "rehearsal" not in rep["by"]
    assert rep["next"] == "nothing to do"


def test_pending_revisions_without_a_rehearsal_are_said_not_commanded(doc, alembic_at):
    alembic_at(REVS[-2])
    rep = doc()
    assert rep["by"]["rehearsal"]["status"] == "warn"
    assert "never rehearsed" in rep["by"]["rehearsal"]["summary"]
    assert rep["next"] == "invoke migrate"
