"""dbops: safe, boring PostgreSQL schema operations for Alembic projects.

Host side: config -> seam (where a command runs) -> operations in ``dbops.ops``.
DB side: ``dbops.agent``, one process per operation that runs where alembic runs
and answers in JSON. This package must stay importable with only the agent's
dependencies (alembic, sqlalchemy, psycopg), so nothing is imported here.
"""
