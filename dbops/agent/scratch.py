"""Scratch databases on the same server: created empty from template0, always dropped."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from psycopg import sql

from dbops.agent import db
from dbops.agent.lock import maintenance_db


def create(purpose: str) -> str:
    name = f"dbops_scratch_{purpose}_{uuid.uuid4().hex[:8]}"[:63]
    with db.connect(maintenance_db(), application_name=f"dbops:scratch {purpose}") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return name


def drop(name: str) -> None:
    with db.connect(maintenance_db(), application_name="dbops:scratch drop") as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def scratch_database(purpose: str) -> Iterator[str]:
    name = create(purpose)
    try:
        yield name
    finally:
        drop(name)
