from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Index, Text, false
from sqlmodel import Field, Relationship, SQLModel

from .base import created_at_field

if TYPE_CHECKING:
    from .post import Post


class Comment(SQLModel, table=True):
    __tablename__ = "comments"
    # Added by hand in the "add performance indexes" migration.
    __table_args__ = (
        Index("idx_comments_post_created", "post_id", "created_at"),
        Index("idx_comments_approved", "is_approved"),
    )

    id: int | None = Field(default=None, primary_key=True)
    content: str = Field(sa_type=Text)
    author_name: str = Field(max_length=100)
    author_email: str = Field(max_length=100)
    is_approved: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    created_at: datetime = created_at_field()
    post_id: int = Field(foreign_key="posts.id", ondelete="CASCADE")

    post: "Post" = Relationship(back_populates="comments")
