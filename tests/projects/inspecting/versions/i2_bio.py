"""authors.bio, added only where missing; filled row by row in Python from what it reads

Revision ID: i2
Revises: i1
"""

import sqlalchemy as sa
from alembic import op

revision = "i2"
down_revision = "i1"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns("authors")}
    if "bio" not in columns:
        op.add_column("authors", sa.Column("bio", sa.Text, nullable=True))
    authors = sa.table("authors", sa.column("id"), sa.column("name"), sa.column("bio"))
    for row in bind.execute(sa.select(authors.c.id, authors.c.name)).all():
        bind.execute(authors.update().where(authors.c.id == row.id).values(bio=f"about {row.name}"))


def downgrade():
    op.drop_column("authors", "bio")
