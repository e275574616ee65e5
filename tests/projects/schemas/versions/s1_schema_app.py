"""schema app and its accounts

Revision ID: s1
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "s1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE SCHEMA app")
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(200), nullable=False),
        schema="app",
    )


def downgrade():
    op.drop_table("accounts", schema="app")
    op.execute("DROP SCHEMA app")
