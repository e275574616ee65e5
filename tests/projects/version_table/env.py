"""URL from DATABASE_URL; the version row in its own table, in its own schema."""

import os

from alembic import context
from models import metadata
from sqlalchemy import create_engine, pool, text

config = context.config
VERSION = {"version_table": "myapp_version", "version_table_schema": "meta"}


def run_migrations_offline():
    context.configure(
        url=os.environ["DATABASE_URL"], target_metadata=metadata, literal_binds=True, **VERSION
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("CREATE SCHEMA IF NOT EXISTS meta"))
        connection.commit()
        context.configure(connection=connection, target_metadata=metadata, **VERSION)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
