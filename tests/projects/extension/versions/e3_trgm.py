"""CREATE EXTENSION pg_trgm; a trigram index on authors.name

Revision ID: e3
Revises: e2
"""

from alembic import op

revision = "e3"
down_revision = "e2"
branch_labels = None
depends_on = None


def upgrade():
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.create_index(
        "ix_authors_name_trgm",
        "authors",
        ["name"],
        postgresql_using="gin",
        postgresql_ops={"name": "gin_trgm_ops"},
    )


def downgrade():
    op.drop_index("ix_authors_name_trgm", table_name="authors")
    op.execute("DROP EXTENSION IF EXISTS pg_trgm")
