"""invoke revision: a new revision file from the models, online operations for big tables."""

from __future__ import annotations

from invoke import task

from dbops.ops import new_revision as new_revision_op
from dbops.tasks import guarded, settings


@task(
    help={
        "message": "the revision's message (its file name is made from it)",
        "online": "write the online operations (docs/online.md) for every table, whatever its "
        "size (default: tables with at least DBOPS_ONLINE_MIN_ROWS rows)",
    }
)
@guarded
def revision(c, message="", online=False):
    """Autogenerate a revision from the models against the live database (read-only): plain
    operations for small tables, op.create_index_online & co. for big ones (docs/online.md)."""
    return new_revision_op.new_revision(settings(c), message, online=online)
