"""Every table model. Importing this package registers them all on
``SQLModel.metadata`` (which is what Alembic's env.py compares against)."""

from .base import NAMING_CONVENTION  # first: installs the naming convention
from .comment import Comment
from .post import Post
from .post_tag import PostTag
from .tag import Tag
from .tag_stats import TagStats
from .user import User
from .user_session import UserSession

__all__ = [
    "NAMING_CONVENTION",
    "Comment",
    "Post",
    "PostTag",
    "Tag",
    "TagStats",
    "User",
    "UserSession",
]
