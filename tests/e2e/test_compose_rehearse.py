"""invoke rehearse through the compose target, on real containers (issue #11: "both targets"):
the database below head with data, a verified backup, `invoke rehearse --json` on it — the
copy restored next to the server (exec -T db pg_restore), the revisions run and measured by
the agent in the backend container — then the live database checked with the test's own psql:
same revision, same schema, same rows, no scratch copy left. Then migrate's preflight shows the
stored rehearsal.

The e2e tests share one stack: this one leaves it as it found it (a fresh database when it runs
before the runbook, which starts from base; head otherwise)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures.projects import SAMPLE_HEAD, SAMPLE_REVS

pytestmark = pytest.mark.e2e

FROM = SAMPLE_REVS[2]  # below head: the revisions above it add to users and create tables

# The schema as the test sees it (not the product's fingerprint): every column with its type,
# nullability and default, every index, constraint and enum of the public schema.
SCHEMA_SQL = r"""
SELECT md5(coalesce(string_agg(x, E'\n' ORDER BY x), '')) FROM (
  SELECT format('%s.%s %s %s %s', c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
                a.attnotnull, pg_get_expr(d.adbin, d.adrelid)) AS x
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm')
    AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
  WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
  WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT t.typname || ' ' || e.enumlabel FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
  WHERE t.typnamespace = 'public'::regnamespace
) s
"""
SCRATCH_SQL = r"SELECT count(*) FROM pg_database WHERE datname LIKE 'dbops\_scratch\_%'"


def ok(done):
    assert done.returncode == 0, (
        f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done


def test_rehearse_on_the_compose_target_leaves_the_live_database_as_it_was(stack, tmp_path):
    found = stack.revision()
    cache = {"DBOPS_CACHE_DIR": str(tmp_path / "cache")}  # the stored rehearsal, this test's own
    try:
        stack.go_to(FROM)
        assert stack.revision() == FROM
        stack.psql(
            "INSERT INTO users (username, email) SELECT 'r' || g, 'r' || g || '@x.org' "
            "FROM generate_series(1, 300) g"
        )
        backup = ok(stack.invoke("backup"))
        path = Path(re.search(r"^backup: (\S+)", backup.stdout, re.M).group(1))

        current = json.loads(ok(stack.invoke("current", "--json")).stdout)
        schema, rows = stack.psql(SCHEMA_SQL), stack.psql("SELECT count(*) FROM users")
        done = ok(stack.invoke("rehearse", "--json", env=cache))  # --from=latest: that backup
        report = json.loads(done.stdout)

        # A verdict per pending revision, measured on the copy of that backup.
        pending = SAMPLE_REVS[SAMPLE_REVS.index(FROM) + 1 :]
        assert report["from"] == [FROM] and report["source"]["file"] == str(path)
        assert [r["revision"] for r in report["revisions"]] == pending
        for r in report["revisions"]:
            assert isinstance(r["verdict"], str) and r["verdict"], r
            assert r["error"] is None, r
        assert report["complete"] is True
        assert report["fingerprint_before"] != report["fingerprint_after"]  # they ran on the copy
        assert Path(report["stored"]).is_file()
        assert (
            " exec -T " in done.stderr and "pg_restore" in done.stderr
        )  # restored next to the server
        # The live database: same revision, schema and rows; no copy left on the server.
        after = json.loads(ok(stack.invoke("current", "--json")).stdout)
        assert after["current"] == current["current"] == [FROM]
        assert after["pending"] == current["pending"]
        assert stack.revision() == FROM
        assert stack.psql(SCHEMA_SQL) == schema
        assert stack.psql("SELECT count(*) FROM users") == rows
        assert stack.psql("SELECT to_regclass('user_sessions') IS NULL") == "t"
        assert stack.psql(SCRATCH_SQL) == "0"
        assert stack.password not in done.stdout + done.stderr

        # migrate's preflight finds the stored rehearsal of exactly these revisions from here.
        migrated = ok(stack.invoke("migrate", env=cache))
        assert f"on {path.name}: predicted" in migrated.stdout
        assert stack.revision() == SAMPLE_HEAD
    finally:
        stack.return_to(found)
    assert stack.revision() == found
    assert stack.psql(SCRATCH_SQL) == "0"
