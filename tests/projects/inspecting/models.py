"""Authors with a bio the revisions add only where it is missing."""

import sqlalchemy as sa

metadata = sa.MetaData()

authors = sa.Table(
    "authors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("bio", sa.Text, nullable=True),
    sa.Index("ix_authors_name", "name"),
)
