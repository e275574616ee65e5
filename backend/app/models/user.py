from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, Text
from sqlmodel import Field, Relationship, SQLModel

from .base import created_at_field, updated_at_field

if TYPE_CHECKING:
    from .post import Post
    from .user_session import UserSession


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=50, unique=True)
    email: str = Field(max_length=255, unique=True)
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    # Profile
    profile_image: str | None = Field(default=None, max_length=255)
    last_login: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    bio: str | None = Field(default=None, sa_type=Text)

    posts: list["Post"] = Relationship(back_populates="author")
    sessions: list["UserSession"] = Relationship(
        back_populates="user", cascade_delete=True, passive_deletes=True
    )
