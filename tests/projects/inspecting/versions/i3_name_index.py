"""ix_authors_name, created only if no index of that name exists

Revision ID: i3
Revises: i2
"""

import sqlalchemy as sa
from alembic import op

revision = "i3"
down_revision = "i2"
branch_labels = None
depends_on = None


def upgrade():
    names = {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("authors")}
    if "ix_authors_name" not in names:
        op.create_index("ix_authors_name", "authors", ["name"])


def downgrade():
    op.drop_index("ix_authors_name", table_name="authors")
