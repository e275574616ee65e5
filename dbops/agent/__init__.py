"""The DB-side agent: runs where alembic runs (the backend container, or this machine)
and answers the host in JSON lines. Needs only alembic, sqlalchemy and psycopg."""
