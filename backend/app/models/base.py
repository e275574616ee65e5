"""Shared pieces of every table: the constraint naming convention and timestamps.

The naming convention must be on ``SQLModel.metadata`` before any table class is
defined (it is applied when a constraint is attached to its table); every model
module imports from here, so importing any of them installs it first.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, func
from sqlmodel import Field, SQLModel

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
SQLModel.metadata.naming_convention = NAMING_CONVENTION


def utcnow() -> datetime:
    return datetime.now(UTC)


def created_at_field() -> Any:
    """``timestamptz NOT NULL DEFAULT now()``, set on insert."""
    return Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": func.now()},
        nullable=False,
    )


def updated_at_field() -> Any:
    """Like ``created_at_field``, and refreshed by the ORM on every update."""
    return Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": func.now(), "onupdate": utcnow},
        nullable=False,
    )
