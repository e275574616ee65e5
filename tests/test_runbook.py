"""RUNBOOK.md, executed: every scenario's command blocks run in the order written, against a
real PostgreSQL with the scenario's symptom planted first. Placeholders (<rev>, <file>, …) are
filled from the planted state; a placeholder the test does not know fails the test, so the
runbook and this file cannot drift apart."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from alembic.config import Config
from alembic.script import ScriptDirectory

from dbops import localpg
from dbops.agent import lock
from tests.conftest import ROOT
from tests.fixtures.doctor import start_standby
from tests.fixtures.projects import SAMPLE_HEAD as HEAD
from tests.fixtures.projects import SAMPLE_REVS as REVS
from tests.fixtures.projects import make_project, seed

RUNBOOK = ROOT / "RUNBOOK.md"
ALEMBIC = str(Path(sys.executable).parent / "alembic")


def scenarios() -> dict[int, list[str]]:
    parts = re.split(r"^## (\d+)\. .*$", RUNBOOK.read_text(), flags=re.M)
    out = {}
    for number, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = []
        for block in re.findall(r"```bash\n(.*?)```", body, re.S):
            lines += [
                ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")
            ]
        out[int(number)] = lines
    return out


class Scenario:
    def __init__(
        self,
        number: int,
        env: dict[str, str],
        project: Path = ROOT / "backend",
        checkout: Path | None = None,
    ):
        self.lines = scenarios()[number]
        self.env = env
        self.project = project  # where `alembic -c backend/alembic.ini` and backend/ paths point
        self.checkout = checkout  # where `git` commands run (never this repository)

    def run(
        self, subs: dict[str, str], *, may_fail: tuple[str, ...] = (), before: dict | None = None
    ):
        results = []
        for i, line in enumerate(self.lines):
            if before and i in before:
                before[i]()
            for key, value in subs.items():
                line = line.replace(f"<{key}>", value)
            assert not re.search(r"<[a-z0-9-]+>", line), f"unfilled placeholder in: {line}"
            argv = shlex.split(line)
            env = dict(self.env)
            while re.fullmatch(r"[A-Z_]+=.*", argv[0]):
                key, value = argv.pop(0).split("=", 1)
                for var in re.findall(r"\$(\w+)", value):  # "$VAR", expanded as a shell does
                    value = value.replace(f"${var}", env[var])
                env[key] = value
            argv = [a.replace("backend/", f"{self.project}/") for a in argv]
            cwd = ROOT
            if argv[0] == "git":
                assert self.checkout is not None, (
                    f"git in the runbook needs a test checkout: {line}"
                )
                cwd = self.checkout
            if argv[0] == "invoke":
                argv = [sys.executable, "-m", "invoke", *argv[1:]]
            elif argv[0] == "alembic":
                argv[0] = ALEMBIC
            done = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=300,
            )
            if not line.startswith(may_fail):
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
            results.append(done)
        return results


def current(conn) -> list[str]:
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        return []
    return [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]


def test_every_scenario_has_commands_and_a_test():
    found = scenarios()
    assert sorted(found) == list(range(1, 17))
    assert all(found.values())
    tested = {int(m) for m in re.findall(r"def test_scenario_(\d+)_", Path(__file__).read_text())}
    assert tested == set(found)


def test_every_invoke_command_in_the_runbook_names_real_flags():
    text = RUNBOOK.read_text()
    for cmd in set(re.findall(r"`(invoke [^`]+)`", text)) | {
        ln for lines in scenarios().values() for ln in lines if ln.startswith("invoke")
    }:
        argv = shlex.split(cmd.replace("…", ""))
        task = argv[1]
        helptext = subprocess.run(
            [sys.executable, "-m", "invoke", "--help", task],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout
        assert helptext.startswith("Usage"), f"no task in: {cmd}"
        for arg in argv[2:]:
            if arg.startswith("--"):
                assert f"{arg.split('=')[0]}" in helptext, f"{cmd}: {arg} is not a flag of {task}"


def test_scenario_1_routine_deploy(invoke, ops_env, db_conn):
    assert invoke("migrate", "--to", REVS[2], "--no-backup").returncode == 0
    results = Scenario(1, ops_env).run({})
    assert "next: invoke migrate" in results[0].stdout
    assert "CREATE TABLE tag_stats" in results[1].stdout
    assert "verified: database is at" in results[2].stdout and "pre-migrate" in results[2].stdout
    assert "state:   at head" in results[3].stdout and current(db_conn) == [HEAD]


def test_scenario_2_migration_failed_half_way(invoke, ops_env, db_conn, tmp_path):
    ini = make_project(tmp_path, "fails_concurrent")
    model = ini.parent / "app" / "models" / "comment.py"  # the model declares the new index too
    model.write_text(
        model.read_text().replace(
            '        Index("idx_comments_approved", "is_approved"),\n',
            '        Index("idx_comments_approved", "is_approved"),\n'
            '        Index("uq_comments_author_email_cc", "author_email", unique=True),\n',
        )
    )
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(ini)}
    assert invoke("migrate", "--no-backup").returncode == 0  # the sample head
    seed(db_conn)
    failed = invoke("migrate", env=env)
    assert (
        failed.returncode == 1 and "database state:" in failed.stderr and "next:" in failed.stderr
    )
    assert current(db_conn) == [HEAD]

    def fix_the_cause():  # the duplicate the unique index failed on
        db_conn.execute("DELETE FROM comments WHERE content = 'ho'")

    results = Scenario(2, env, ini.parent).run(
        {"index": "uq_comments_author_email_cc"},
        may_fail=("invoke doctor",),
        before={3: fix_the_cause},
    )
    assert "1 pending" in results[0].stdout or "pending" in results[0].stdout
    assert HEAD in results[2].stdout
    assert "verified: database is at f1f1f1000004" in results[3].stdout


def test_scenario_3_rollback_to_a_named_revision(invoke, ops_env, db_conn):
    assert invoke("migrate").returncode == 0
    db_conn.execute("INSERT INTO users (id, username, email) VALUES (1, 'ann', 'a@x')")
    db_conn.execute(
        "INSERT INTO user_sessions (id, user_id, session_token, expires_at) "
        "VALUES (1, 1, 'tok', now())"
    )
    results = Scenario(3, ops_env).run({"rev": REVS[2][:6]})
    assert "DATA LOSS: drops table user_sessions: 1 row" in results[1].stdout
    assert "pre-rollback" in results[1].stdout
    assert current(db_conn) == [REVS[2]] and REVS[2] in results[2].stdout


def test_scenario_4_restore_from_a_backup(invoke, ops_env, db_conn):
    assert invoke("migrate", "--no-backup").returncode == 0
    db_conn.execute(
        "INSERT INTO users (username, email) SELECT 'u' || g, 'u' || g || '@x' "
        "FROM generate_series(1, 50) g"
    )
    backup = invoke("backup")
    path = re.search(r"^backup: (\S+)", backup.stdout, re.M).group(1)
    db_conn.close()
    with psycopg.connect(**_conninfo(ops_env), autocommit=True) as conn:
        conn.execute("DELETE FROM users")
    results = Scenario(4, ops_env).run({"file": path})
    assert Path(path).name in results[0].stdout
    assert "restored:" in results[2].stdout
    with psycopg.connect(**_conninfo(ops_env)) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 50
        assert current(conn) == [HEAD]


def test_scenario_5_version_row_disagrees_with_the_schema(invoke, ops_env, db_conn):
    assert invoke("migrate", "--no-backup").returncode == 0
    db_conn.execute("UPDATE alembic_version SET version_num = %s", (REVS[1],))  # stamped behind
    results = Scenario(5, ops_env).run({}, may_fail=("invoke doctor",))
    assert "next: invoke recover" in results[0].stdout
    assert HEAD in results[1].stdout
    assert current(db_conn) == [HEAD]
    # The stamp the section offers when the revision is known (and its back-out):
    assert invoke("stamp", f"--to={REVS[1]}", "--yes").returncode == 0 and current(db_conn) == [
        REVS[1]
    ]
    assert invoke("stamp", f"--to={HEAD}", "--yes").returncode == 0 and current(db_conn) == [HEAD]


def test_scenario_6_multiple_heads(invoke, ops_env, db_conn, tmp_path):
    ini = make_project(tmp_path, "accepted", branch_from={"accepted": REVS[4]})
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(ini)}
    refused = invoke("migrate", env=env)
    assert refused.returncode == 1 and "2 heads" in refused.stderr
    heads = sorted(ScriptDirectory.from_config(Config(str(ini))).get_heads())
    results = Scenario(6, env, ini.parent).run(
        {"head1": heads[0], "head2": heads[1]}, may_fail=("invoke heads",)
    )
    assert "merge" in results[0].stdout
    assert len(ScriptDirectory.from_config(Config(str(ini))).get_heads()) == 1
    assert "check passed" in results[2].stdout and "verified" in results[3].stdout


def test_scenario_7_empty_autogenerate(invoke, ops_env, db_conn, tmp_path):
    assert invoke("migrate", "--no-backup").returncode == 0
    project = tmp_path / "project"
    shutil.copytree(ROOT / "backend", project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "app" / "models" / "widget.py").write_text(
        "from sqlmodel import Field, SQLModel\n\n\nclass Widget(SQLModel, table=True):\n"
        "    __tablename__ = 'widgets'\n"
        "    id: int | None = Field(default=None, primary_key=True)\n"
        "    name: str = Field(max_length=50)\n"
    )
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(project / "alembic.ini")}

    def import_the_model():
        init = project / "app" / "models" / "__init__.py"
        init.write_text(
            init.read_text() + "from app.models.widget import Widget  # noqa: E402,F401\n"
        )

    results = Scenario(7, env, project).run({"table": "widgets"}, before={2: import_the_model})
    assert "No new upgrade operations detected" in results[0].stdout + results[0].stderr  # the trap
    new = [p for p in (project / "alembic" / "versions").glob("*add_widgets_table.py")]
    assert len(new) == 1 and "op.create_table('widgets'" in new[0].read_text().replace('"', "'")
    assert "check passed" in results[3].stdout


def test_scenario_8_backup_fails(invoke, ops_env, db_conn, tmp_path):
    assert invoke("migrate", "--no-backup").returncode == 0
    failed = invoke("backup", env={"DBOPS_BACKUP_RESERVE_MB": str(10**9)})
    assert failed.returncode == 1 and "not enough free space" in failed.stderr
    backup_dir = Path(ops_env["DBOPS_BACKUP_DIR"])
    assert not list(backup_dir.glob("*.dump")) if backup_dir.exists() else True
    other = tmp_path / "bigger"
    results = Scenario(8, ops_env).run(
        {"backup-dir": str(backup_dir.parent), "other-dir": str(other)}, may_fail=("invoke doctor",)
    )
    assert "backup:" in results[2].stdout and list(other.glob("*.dump"))


def test_scenario_9_lock_timeouts(invoke, ops_env, db_conn, pg_cluster, database):
    assert invoke("migrate", "--to", REVS[2], "--no-backup").returncode == 0
    blocker = pg_cluster.connect(database, autocommit=False)
    blocker.execute("SET application_name = 'console'")
    blocker.execute("LOCK TABLE comments IN ROW EXCLUSIVE MODE")  # then idle in transaction
    pid = blocker.info.backend_pid
    try:
        failed = invoke(
            "migrate",
            "--no-backup",
            env={"DBOPS_LOCK_RETRIES": "1", "DBOPS_LOCK_RETRY_WAIT": "0.2"},
        )
        assert failed.returncode == 1 and "lock" in failed.stderr.lower()
        assert current(db_conn) == [REVS[2]]
        results = Scenario(9, ops_env).run({"pid": str(pid)}, may_fail=("invoke doctor",))
        assert str(pid) in results[0].stdout and "pg_terminate_backend" in results[0].stdout
        assert "verified" in results[2].stdout and current(db_conn) == [HEAD]
    finally:
        blocker.close()


def test_scenario_10_an_alert_fired(invoke, ops_env, db_conn, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from dbops.config import load_settings
    from dbops.ops import freshness

    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "items.sql").write_text("SELECT count(*) >= 100 FROM items;")
    metrics_file = tmp_path / "dbops.prom"
    env = {**ops_env, "DBOPS_DRILL_CHECKS": str(checks), "DBOPS_METRICS_FILE": str(metrics_file)}
    assert invoke("migrate", "--no-backup", env=env).returncode == 0
    db_conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
    assert invoke("backup", env=env).returncode == 0
    assert invoke("drill", env=env).returncode == 1  # the symptom: the last drill failed
    settings = load_settings(ROOT, environ=env)
    assert freshness.drill_freshness(settings)[0] is False
    db_conn.execute("INSERT INTO items SELECT generate_series(1, 100)")
    results = Scenario(10, env).run({}, may_fail=("invoke doctor",))
    assert "drill passed" in results[3].stdout
    values = {
        s.name: s.value
        for f in text_string_to_metric_families(metrics_file.read_text())
        for s in f.samples
    }
    assert values["dbops_drill_last_success"] == 1
    assert freshness.drill_freshness(settings)[0] is True
    assert freshness.backup_freshness(settings)[0] is True


def test_scenario_11_the_target_is_a_read_only_standby(invoke, ops_env):
    primary = localpg.new_cluster()
    try:
        primary.create_database("app")
        env = {**ops_env, **primary.env("app")}
        assert invoke("migrate", "--to", REVS[2], env=env).returncode == 0
        standby = start_standby(primary, Path(tempfile.mkdtemp(prefix="dbops-standby-")))
        try:
            failed = invoke("migrate", env={**env, "POSTGRES_PORT": str(standby.port)})
            assert failed.returncode == 1 and "read-only transaction" in failed.stderr
            results = Scenario(11, {**env, "POSTGRES_PORT": str(standby.port)}).run(
                {"primary-host": "127.0.0.1", "primary-port": str(primary.port)},
                may_fail=("invoke doctor",),
            )
            assert "is a read-only standby" in results[0].stdout
            assert (
                f"next: POSTGRES_HOST=127.0.0.1 POSTGRES_PORT={primary.port} invoke doctor"
                in results[0].stdout
            )
            assert "verified: database is at" in results[2].stdout
        finally:
            standby.destroy()
        with primary.connect("app") as conn:
            assert current(conn) == [HEAD]
    finally:
        primary.destroy()


def test_scenario_12_a_roles_connection_limit_is_used_up(
    invoke, ops_env, db_conn, pg_cluster, database
):
    assert invoke("migrate").returncode == 0
    db_conn.execute("CREATE ROLE app_pool LOGIN PASSWORD 'pw-pool' CONNECTION LIMIT 3")
    db_conn.execute("GRANT pg_read_all_data TO app_pool")
    pool = [
        psycopg.connect(
            host="127.0.0.1",
            port=pg_cluster.port,
            user="app_pool",
            password="pw-pool",
            dbname=database,
        )
        for _ in range(3)
    ]
    env = {
        **ops_env,
        "POSTGRES_USER": "app_pool",
        "POSTGRES_PASSWORD": "pw-pool",
        "SUPERUSER_PASSWORD": pg_cluster.password,
    }
    try:
        failed = invoke("backup", env=env)
        assert failed.returncode == 1 and "too many connections" in failed.stderr
        results = Scenario(12, env).run(
            {"superuser": pg_cluster.user, "role": "app_pool"}, may_fail=("invoke doctor",)
        )
        assert "role app_pool has used up its connection limit" in results[0].stdout
        assert results[1].stdout.count("| idle") == 3
        assert " pg_terminate_backend " in results[2].stdout and results[2].stdout.count(" t") >= 3
        assert "ok    connectivity" in results[3].stdout
        assert "pw-pool" not in "".join(r.stdout + r.stderr for r in results)
    finally:
        for conn in pool:
            conn.close()
        db_conn.execute("DROP OWNED BY app_pool")
        db_conn.execute("DROP ROLE app_pool")


def test_scenario_13_the_database_is_ahead_of_the_code(invoke, ops_env, db_conn, tmp_path):
    ini = make_project(tmp_path, "flag")
    proj = ini.parent
    git = ["git", "-C", str(proj), "-c", "user.name=t", "-c", "user.email=t@x"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "release 2: comments.flagged"], check=True)
    env = {
        **ops_env,
        "DBOPS_ALEMBIC_INI": str(ini),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
    }
    assert invoke("migrate", env=env).returncode == 0
    next(proj.glob("alembic/versions/a1f1a9000001_*.py")).unlink()  # release 1 deployed again
    shutil.copy(ROOT / "backend" / "app" / "models" / "comment.py", proj / "app" / "models")
    subprocess.run([*git, "commit", "-qam", "back to release 1"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD~1"], capture_output=True, text=True, check=True
    ).stdout.strip()
    results = Scenario(13, env, proj, checkout=proj).run(
        {"rev": "a1f1a9000001", "commit": commit}, may_fail=("invoke doctor",)
    )
    assert "the database is AHEAD of this code" in results[0].stdout
    assert "next: git log --all --oneline -S a1f1a9000001" in results[0].stdout
    assert f"{commit} release 2" in results[1].stdout
    assert (
        results[3].returncode == 0
        and "ok    revision        at head a1f1a9000001" in results[3].stdout
    )
    assert current(db_conn) == ["a1f1a9000001"]


def test_scenario_14_the_dbops_lock_is_held_by_another_deploy(
    invoke, ops_env, db_conn, pg_cluster, database
):
    assert invoke("migrate", "--to", REVS[2]).returncode == 0
    other = pg_cluster.connect("postgres", application_name="dbops:migrate ci@runner-7")
    other.execute("SELECT pg_advisory_lock(%s, %s)", lock.lock_key(database))
    busy = invoke("migrate")
    assert busy.returncode == 1 and "is busy: another dbops operation holds its lock" in busy.stderr
    results = Scenario(14, ops_env).run(
        {}, may_fail=("invoke doctor",), before={2: other.close}
    )  # the other deploy ends
    assert "a dbops migrate is running" in results[0].stdout and "ci@runner-7" in results[0].stdout
    assert "next: invoke doctor   # after the dbops migrate pid" in results[0].stdout
    assert "dbops:migrate ci@runner-7" in results[1].stdout and other.closed
    assert "next: invoke migrate" in results[2].stdout
    assert "verified: database is at" in results[3].stdout and current(db_conn) == [HEAD]


def _conninfo(env: dict[str, str]) -> dict:
    return {
        "host": env["POSTGRES_HOST"],
        "port": env["POSTGRES_PORT"],
        "user": env["POSTGRES_USER"],
        "password": env["POSTGRES_PASSWORD"],
        "dbname": env["POSTGRES_DB"],
    }


def test_scenario_15_before_a_risky_deploy(invoke, ops_env, db_conn, tmp_path):
    ini = make_project(tmp_path, "flag")  # ALTER TABLE comments + a non-concurrent index on it
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(ini), "DBOPS_CACHE_DIR": str(tmp_path / "cache")}
    assert invoke("migrate", "--to", HEAD, "--no-backup", env=env).returncode == 0
    seed(db_conn)
    results = Scenario(15, env, ini.parent).run({"reason": "3 comments, announced"})
    assert "predicted duration" in results[0].stdout and "index_not_concurrent" in results[0].stdout
    assert "rehearsal " in results[1].stdout and "verified" in results[1].stdout
    assert current(db_conn) != [HEAD]


def test_scenario_16_a_scratch_step_refused(
    invoke, ops_env, db_conn, tmp_path, pg_cluster, database
):
    """A project whose env.py reads MYAPP_DB_URL (tests/projects/custom_var): doctor names the
    isolation failure and the file; after README's few lines, doctor and rehearse pass."""
    from tests.test_foreign_projects import copy_shape, live_url

    url = live_url(pg_cluster, database)
    ini = copy_shape(tmp_path, "custom_var", url)
    env = {**ops_env, "DBOPS_ALEMBIC_INI": str(ini), "MYAPP_DB_URL": url}
    assert invoke("migrate", "--to=a1", "--no-backup", env=env).returncode == 0
    env_py = ini.parent / "env.py"

    def fix_env_py():
        text = env_py.read_text()
        fixed = text.replace(
            'def run_migrations_online():\n    engine = create_engine(os.environ["MYAPP_DB_URL"]',
            "def run_migrations_online():\n"
            '    given = config.attributes.get("connection")\n'
            "    if given is not None:\n"
            "        context.configure(connection=given, target_metadata=metadata)\n"
            "        with context.begin_transaction():\n"
            "            context.run_migrations()\n"
            "        return\n"
            '    url = config.get_main_option("sqlalchemy.url") or os.environ["MYAPP_DB_URL"]\n'
            "    engine = create_engine(url",
        )
        assert fixed != text
        env_py.write_text(fixed)

    results = Scenario(16, env, ini.parent).run(
        {}, may_fail=("invoke doctor",), before={1: fix_env_py}
    )
    assert "FAIL  isolation" in results[0].stdout
    assert f"next: ${{EDITOR:-vi}} {env_py}" in results[0].stdout
    assert "ok    isolation" in results[1].stdout
    assert "ok    schema" in results[1].stdout
    assert results[2].returncode == 0
    assert current(db_conn) == ["a1"]
