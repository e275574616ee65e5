"""`invoke psql -c` runs exactly one SQL statement (issue 19 item 4)."""

from __future__ import annotations

import pytest

from dbops import sqltext
from dbops.errors import ConfigError

ONE = [
    "select 1",
    "select 1;",
    "  select 1 ;  ; ",
    "select ';' as semi",
    "select 'it''s; fine'",
    "select E'back\\'slash; still one'",
    'select 1 as "a;b"',
    'select 1 as "x""; y"',
    "select $$; drop table t$$",
    "select $body$ ; $$ ; $body$",
    "do $f$ begin perform 1; perform 2; end $f$",
    "select 1 -- ; drop table t",
    "select 1 /* ; /* nested ; */ still comment ; */",
    "-- a comment first\nselect 1",
    "select $1",  # a positional parameter, not a dollar quote
    "BEGIN READ WRITE; ALTER DATABASE app RESET default_transaction_read_only; COMMIT",
    "start transaction; drop index concurrently if exists i; end",
    'DROP DATABASE "app_dbops_old_2026;x"',
]
SEVERAL = [
    "select 1; drop table victim",
    "select 1;select 2",
    "select ';'; select 2",
    "select $$x$$; select 2",
    "select 1 /* c */; delete from t",
    "BEGIN; select 1; select 2; COMMIT",
    "select 1; BEGIN; drop table t; COMMIT",
]
META = ["\\! touch /tmp/pwned", "select 1 \\g", "select 1; \\! id", "\\c other"]
UNTERMINATED = ["select 'x", 'select "x', "select $$x", "select 1 /* x", "select E'\\'"]


@pytest.mark.parametrize("sql", ONE)
def test_one_statement_is_accepted(sql):
    assert sqltext.one_statement(sql) == sql


@pytest.mark.parametrize("sql", SEVERAL)
def test_several_statements_are_refused(sql):
    with pytest.raises(ConfigError, match="runs one SQL statement, this is") as err:
        sqltext.one_statement(sql)
    assert err.value.next_command.startswith("invoke psql -c ")


@pytest.mark.parametrize("sql", META)
def test_psql_meta_commands_are_refused(sql):
    with pytest.raises(ConfigError, match="psql meta-command"):
        sqltext.one_statement(sql)


@pytest.mark.parametrize("sql", [*UNTERMINATED, "", "  ;  ", "-- only a comment"])
def test_empty_or_unterminated_text_is_refused(sql):
    with pytest.raises(ConfigError, match="nothing was run"):
        sqltext.one_statement(sql)


def test_invoke_psql_refuses_a_second_statement_and_runs_one(invoke, db_conn, tmp_path):
    db_conn.execute("CREATE TABLE victim (id int)")
    db_conn.commit()
    pwned = tmp_path / "pwned"
    for sql in ("select 1; drop table victim", f"\\! touch {pwned}"):
        done = invoke("psql", "-c", sql)
        assert done.returncode == 1 and done.stderr.startswith("error: invoke psql"), done.stderr
        assert "nothing was run" in done.stderr and "Traceback" not in done.stderr
    assert not pwned.exists()
    assert db_conn.execute("select to_regclass('victim') is not null").fetchone() == (True,)
    done = invoke("psql", "-c", "select 'a;b' as x")
    assert done.returncode == 0 and "a;b" in done.stdout, done.stderr
