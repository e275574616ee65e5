"""add tag_stats table

Revision ID: 99e0e8546901
Revises: 23cd436768a8
Create Date: 2026-11-22 00:52:24.851281

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "99e0e8546901"
down_revision: str | Sequence[str] | None = "23cd436768a8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tag_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tag_id", sa.Integer(), nullable=False),
        sa.Column("post_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("post_count >= 0", name=op.f("ck_tag_stats_post_count_non_negative")),
        sa.ForeignKeyConstraint(["tag_id"], ["tags.id"], name=op.f("fk_tag_stats_tag_id_tags"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tag_stats")),
        sa.UniqueConstraint("tag_id", name=op.f("uq_tag_stats_tag_id")),
    )


def downgrade() -> None:
    op.drop_table("tag_stats")
