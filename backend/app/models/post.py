from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Text
from sqlmodel import Field, Relationship, SQLModel

from .base import created_at_field, updated_at_field
from .post_tag import PostTag

if TYPE_CHECKING:
    from .comment import Comment
    from .tag import Tag
    from .user import User


class Post(SQLModel, table=True):
    __tablename__ = "posts"

    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(max_length=200)
    content: str = Field(sa_type=Text)
    author_id: int = Field(foreign_key="users.id", index=True)
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()

    author: "User" = Relationship(back_populates="posts")
    comments: list["Comment"] = Relationship(
        back_populates="post", cascade_delete=True, passive_deletes=True
    )
    tags: list["Tag"] = Relationship(back_populates="posts", link_model=PostTag)
