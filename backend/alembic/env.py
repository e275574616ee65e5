"""Alembic environment: SQLModel metadata, URL from the environment.

- Every model is imported (``app.models``) so autogenerate sees all tables.
- The URL comes from ``app.core.config.database_url()``, never alembic.ini.
- A caller may pass an open Connection (or an Engine, as pytest-alembic does)
  as ``config.attributes["connection"]``; it is used and not closed here.
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from app import models  # noqa: F401  (registers every table)
from app.core.config import database_url

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata

COMPARE = {"compare_type": True, "compare_server_default": True}


def run_migrations_offline() -> None:
    """``--sql``: render SQL for PostgreSQL without connecting."""
    try:
        url = database_url()
    except RuntimeError:
        url = "postgresql+psycopg://"  # the dialect is all offline mode needs
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **COMPARE,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, **COMPARE)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        do_run_migrations(given)
        return

    # An Engine may be given too (pytest-alembic does that); else make our own.
    engine = given if given is not None else create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            do_run_migrations(connection)
    finally:
        if given is None:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
