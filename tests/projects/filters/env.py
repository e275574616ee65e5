"""URL from DATABASE_URL; autogenerate filters (include_name, include_object) leave out a table
the database has on purpose (legacy_audit, written by a trigger outside the models), and
compare_type / compare_server_default are on."""

import os

from alembic import context
from models import metadata
from sqlalchemy import create_engine, pool

config = context.config
ON_PURPOSE = {"legacy_audit"}


def include_name(name, type_, parent_names):
    return not (type_ == "table" and name in ON_PURPOSE)


def include_object(obj, name, type_, reflected, compare_to):
    return not (type_ == "table" and name in ON_PURPOSE)


OPTIONS = {
    "target_metadata": metadata,
    "include_name": include_name,
    "include_object": include_object,
    "compare_type": True,
    "compare_server_default": True,
}


def run_migrations_offline():
    context.configure(url=os.environ["DATABASE_URL"], literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
