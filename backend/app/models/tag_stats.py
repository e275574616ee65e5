from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, DateTime
from sqlmodel import Field, Relationship, SQLModel

from .base import updated_at_field

if TYPE_CHECKING:
    from .tag import Tag


class TagStats(SQLModel, table=True):
    """Usage counters of one tag (one row per tag)."""

    __tablename__ = "tag_stats"
    __table_args__ = (CheckConstraint("post_count >= 0", name="post_count_non_negative"),)

    id: int | None = Field(default=None, primary_key=True)
    tag_id: int = Field(foreign_key="tags.id", ondelete="CASCADE", unique=True)
    post_count: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    updated_at: datetime = updated_at_field()

    tag: "Tag" = Relationship(back_populates="stats")
