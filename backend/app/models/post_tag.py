from sqlmodel import Field, SQLModel

from . import base  # noqa: F401  (naming convention first)


class PostTag(SQLModel, table=True):
    """Link table between posts and tags."""

    __tablename__ = "post_tags"

    post_id: int = Field(foreign_key="posts.id", ondelete="CASCADE", primary_key=True)
    # The primary key (post_id, tag_id) serves lookups by post; this index by tag.
    tag_id: int = Field(foreign_key="tags.id", ondelete="CASCADE", primary_key=True, index=True)
