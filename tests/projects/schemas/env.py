"""URL from DATABASE_URL; the models live in schema ``app`` (include_schemas=True)."""

import os

from alembic import context
from models import metadata
from sqlalchemy import create_engine, pool

config = context.config


def include_name(name, type_, parent_names):
    if type_ == "schema":
        return name in (None, "app")
    return True


def configure(**kw):
    context.configure(
        target_metadata=metadata, include_schemas=True, include_name=include_name, **kw
    )


def run_migrations_offline():
    configure(url=os.environ["DATABASE_URL"], literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
