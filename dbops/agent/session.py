"""The first request of every session: who is asking, and the agent's own versions.
Kept free of alembic/sqlalchemy imports so a session that never needs them starts fast."""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version

from dbops.agent import db
from dbops.agent.protocol import handler


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@handler("hello")
def hello(ctx, operator: str = "unknown", maintenance_db: str = "postgres") -> dict:
    """First request of every session: who is asking, and the agent's own versions."""
    ctx.operator = operator
    os.environ["DBOPS_MAINTENANCE_DB"] = maintenance_db
    return {
        "python": sys.version.split()[0],
        "alembic": _version("alembic"),
        "sqlalchemy": _version("sqlalchemy"),
        "psycopg": _version("psycopg"),
        "database": db.database(),
    }
