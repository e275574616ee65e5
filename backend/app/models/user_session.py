from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import DateTime
from sqlmodel import Field, Relationship, SQLModel

from .base import created_at_field

if TYPE_CHECKING:
    from .user import User


class UserSession(SQLModel, table=True):
    """A login session. Look-ups: by token (unique), by user, and expired ones
    (``WHERE expires_at < now()``) for clean-up."""

    __tablename__ = "user_sessions"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    session_token: str = Field(max_length=128, unique=True)
    created_at: datetime = created_at_field()
    expires_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
    last_seen_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    ip_address: str | None = Field(default=None, max_length=45)  # fits IPv6 text form
    user_agent: str | None = Field(default=None, max_length=512)

    user: "User" = Relationship(back_populates="sessions")
