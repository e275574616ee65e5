"""authors

Revision ID: i1
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "i1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "authors",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )


def downgrade():
    op.drop_table("authors")
