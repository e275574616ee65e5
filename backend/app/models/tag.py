from typing import TYPE_CHECKING

from sqlmodel import Field, Relationship, SQLModel

from . import base  # noqa: F401  (naming convention first)
from .post_tag import PostTag

if TYPE_CHECKING:
    from .post import Post
    from .tag_stats import TagStats


class Tag(SQLModel, table=True):
    __tablename__ = "tags"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=50, unique=True)

    posts: list["Post"] = Relationship(back_populates="tags", link_model=PostTag)
    stats: "TagStats" = Relationship(
        back_populates="tag",
        cascade_delete=True,
        passive_deletes=True,
        sa_relationship_kwargs={"uselist": False},
    )
