"""``process_revision_directives`` for a project's env.py: ``alembic revision --autogenerate``
writes the online operations of dbops.online (``op.create_index_online``, …) instead of the
plain ones for the tables that are big on the live database. In env.py::

    from dbops.online_autogen import process_revision_directives
    ...
    context.configure(..., process_revision_directives=process_revision_directives)

(in ``run_migrations_online()``). Thresholds from the environment when the
hook runs: ``DBOPS_ONLINE_MIN_ROWS`` (default 50,000 rows), ``DBOPS_ONLINE=1`` for every table.
``invoke revision --online`` needs no env.py change (the agent passes the same hook). The code
is dbops/agent/online_revision.py (it runs where alembic runs); docs/online.md.
"""

from dbops.agent.online_revision import MIN_ROWS, OnlineRevision, process_revision_directives

__all__ = ["MIN_ROWS", "OnlineRevision", "process_revision_directives"]
