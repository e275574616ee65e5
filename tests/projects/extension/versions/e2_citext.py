"""CREATE EXTENSION citext; authors.name becomes citext

Revision ID: e2
Revises: e1
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import CITEXT

revision = "e2"
down_revision = "e1"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE EXTENSION IF NOT EXISTS citext")
    op.alter_column("authors", "name", type_=CITEXT, existing_nullable=False)


def downgrade():
    op.alter_column("authors", "name", type_=sa.String(100), existing_nullable=False)
    op.execute("DROP EXTENSION IF EXISTS citext")
