"""add performance indexes

Revision ID: 23cd436768a8
Revises: 1be15b655bdb
Create Date: 2026-11-22 00:52:19.515746

"""
from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "23cd436768a8"
down_revision: str | Sequence[str] | None = "1be15b655bdb"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A post's comments in time order: WHERE post_id = ? ORDER BY created_at
    op.create_index("idx_comments_post_created", "comments", ["post_id", "created_at"])
    # Moderation queue: WHERE is_approved = false
    op.create_index("idx_comments_approved", "comments", ["is_approved"])


def downgrade() -> None:
    op.drop_index("idx_comments_approved", table_name="comments")
    op.drop_index("idx_comments_post_created", table_name="comments")
