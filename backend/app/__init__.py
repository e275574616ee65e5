"""Sample blog backend: SQLModel models and their Alembic migrations."""
