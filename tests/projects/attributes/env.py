"""alembic's cookbook "sharing a connection": a caller's connection in
``config.attributes["connection"]`` is used; run on its own, the URL is MYAPP_DB_URL."""

import os

from alembic import context
from models import metadata
from sqlalchemy import create_engine, pool

config = context.config


def run_migrations_offline():
    context.configure(url=os.environ["MYAPP_DB_URL"], target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run(connection):
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connectable = config.attributes.get("connection", None)
    if connectable is not None:
        run(connectable)
        return
    engine = create_engine(os.environ["MYAPP_DB_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        run(connection)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
