"""add user profile fields

Revision ID: 1be15b655bdb
Revises: 308ea353e93f
Create Date: 2026-11-22 00:52:15.689881

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "1be15b655bdb"
down_revision: str | Sequence[str] | None = "308ea353e93f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("profile_image", sa.String(length=255), nullable=True))
    op.add_column("users", sa.Column("last_login", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("bio", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "bio")
    op.drop_column("users", "last_login")
    op.drop_column("users", "profile_image")
