"""The models check after migrate on a database that has objects on purpose: named as only
in the database, both ways out, DBOPS_MODELS_IGNORE, and no undo advice for a run that applied
nothing (nor after `migrate --sql`)."""

from __future__ import annotations

import pytest

from dbops.agent.migration import ignore_rules, ignored_by

NB = "--no-backup"


@pytest.fixture
def at_head_with_a_raw_index(invoke, db_conn):
    done = invoke("migrate", NB)
    assert done.returncode == 0, done.stderr
    db_conn.execute("CREATE INDEX ix_raw_sql ON comments (author_name)")


def test_an_index_only_the_database_has_is_named_with_both_ways_out(
    at_head_with_a_raw_index, invoke
):
    done = invoke("migrate", NB)
    assert done.returncode == 1
    err = done.stderr
    assert "only in the database, not in the models:" in err
    assert "remove_index comments.ix_raw_sql" in err
    assert "DBOPS_MODELS_IGNORE=index:comments.ix_raw_sql" in err
    assert "declare what only the database has in the models" in err
    assert "--autogenerate" not in err  # it would write a revision that drops the index
    assert "to undo this run" not in err  # this run applied nothing


def test_models_ignore_leaves_it_out(at_head_with_a_raw_index, invoke):
    for value in ("index:ix_raw_sql", "comments.ix_raw_*", "index:comments.ix_raw_sql"):
        done = invoke("migrate", NB, env={"DBOPS_MODELS_IGNORE": value})
        assert done.returncode == 0, (value, done.stderr)


def test_migrate_sql_at_head_checks_nothing_and_advises_nothing(at_head_with_a_raw_index, invoke):
    done = invoke("migrate", "--sql")
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stderr and "rollback" not in done.stderr


def test_ignore_rules_syntax():
    rules = ignore_rules(" index:ix_a , audit_log,column:orders.legacy_*,")
    assert rules == [("index", "ix_a"), (None, "audit_log"), ("column", "orders.legacy_*")]

    class Table:
        name = "orders"

    class Column:
        table = Table()

    include = ignored_by(rules)
    assert not include(Column(), "legacy_code", "column", True, None)
    assert include(Column(), "code", "column", True, None)
    assert not include(object(), "audit_log", "table", True, None)
    assert include(object(), "ix_a", "table", True, None)  # the rule says index
