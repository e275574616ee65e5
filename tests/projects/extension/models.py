"""Authors whose name is case-insensitive (citext) and searchable by trigram (pg_trgm)."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import CITEXT

metadata = sa.MetaData()

authors = sa.Table(
    "authors",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", CITEXT, nullable=False),
    sa.Index(
        "ix_authors_name_trgm",
        "name",
        postgresql_using="gin",
        postgresql_ops={"name": "gin_trgm_ops"},
    ),
)
