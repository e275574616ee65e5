"""The application's settings, built once at import (as pydantic-settings projects do)."""

import os


class Settings:
    def __init__(self) -> None:
        self.database_url = os.environ["DATABASE_URL"]


settings = Settings()
