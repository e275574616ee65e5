"""books.isbn and its index

Revision ID: c3
Revises: b2
"""

import sqlalchemy as sa
from alembic import op

revision = "c3"
down_revision = "b2"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("books", sa.Column("isbn", sa.String(13), nullable=True))
    op.create_index("ix_books_isbn", "books", ["isbn"])


def downgrade():
    op.drop_index("ix_books_isbn", table_name="books")
    op.drop_column("books", "isbn")
