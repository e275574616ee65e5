"""Tables in the schema ``app``, not ``public``."""

import sqlalchemy as sa

metadata = sa.MetaData(schema="app")

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(200), nullable=False),
    sa.Column("active", sa.Boolean, nullable=True),
)
