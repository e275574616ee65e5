"""The lock modes a migration's SQL takes, and PostgreSQL's conflict table (no database)."""

from __future__ import annotations

import pytest

from dbops.agent.pglocks import MODES, conflicts, modes_for_sql

SQL = """
BEGIN;

CREATE TABLE tag_stats (
    id SERIAL NOT NULL,
    tag_id INTEGER NOT NULL,
    CONSTRAINT fk_tag_stats_tag_id_tags FOREIGN KEY(tag_id) REFERENCES tags (id) ON DELETE CASCADE
);

CREATE INDEX idx_comments_post_created ON comments (post_id, created_at);

CREATE UNIQUE INDEX CONCURRENTLY uq_x ON public.posts (title);

ALTER TABLE users ADD COLUMN bio TEXT;

CREATE INDEX ix_tag_stats_tag ON tag_stats (tag_id);

UPDATE "post_tags" SET tag_id = 1 WHERE false;

LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE;

DROP INDEX ix_old;

UPDATE alembic_version SET version_num='99e0e8546901' WHERE alembic_version.version_num = 'x';

COMMIT;
"""


def test_modes_for_the_pending_sql():
    assert modes_for_sql(SQL) == {
        "audit_log": ["ShareRowExclusiveLock"],
        "comments": ["ShareLock"],
        "index:ix_old": ["AccessExclusiveLock"],
        "post_tags": ["RowExclusiveLock"],
        "posts": ["ShareUpdateExclusiveLock"],
        "tags": ["ShareRowExclusiveLock"],  # the foreign key's target
        "users": ["AccessExclusiveLock"],
    }  # tag_stats is created by the SQL itself: nobody else can hold it


@pytest.mark.parametrize(
    ("held", "wanted", "blocks"),
    [
        ("AccessShareLock", "ShareLock", False),  # a SELECT beside CREATE INDEX
        ("AccessShareLock", "AccessExclusiveLock", True),  # a SELECT beside ADD COLUMN
        ("RowExclusiveLock", "ShareLock", True),  # an UPDATE beside CREATE INDEX
        ("RowExclusiveLock", "ShareUpdateExclusiveLock", False),  # ... beside CONCURRENTLY
        ("ShareUpdateExclusiveLock", "ShareUpdateExclusiveLock", True),
        ("ShareLock", "ShareLock", False),
        ("RowShareLock", "ExclusiveLock", True),
    ],
)
def test_conflicts(held, wanted, blocks):
    assert conflicts(held, wanted) is blocks


def test_the_conflict_table_is_symmetric():
    assert all(conflicts(a, b) == conflicts(b, a) for a in MODES for b in MODES)
