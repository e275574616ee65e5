"""app.accounts.active

Revision ID: s2
Revises: s1
"""

import sqlalchemy as sa
from alembic import op

revision = "s2"
down_revision = "s1"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("accounts", sa.Column("active", sa.Boolean, nullable=True), schema="app")


def downgrade():
    op.drop_column("accounts", "active", schema="app")
