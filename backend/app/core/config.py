"""Database settings, read from the environment each time they are asked for."""

from __future__ import annotations

import os

from sqlalchemy import URL, make_url

DRIVER = "postgresql+psycopg"
_PARTS = ("POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_DB")


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def database_url() -> URL:
    """The database URL, from the current environment (never cached).

    1. POSTGRES_HOST, POSTGRES_USER and POSTGRES_DB (with optional
       POSTGRES_PASSWORD and POSTGRES_PORT, default 5432): the URL is built
       with ``URL.create`` so passwords with URL-special characters are safe.
    2. Otherwise DATABASE_URL; a bare ``postgresql://`` or ``postgres://``
       scheme is switched to the psycopg 3 driver.

    The result is a ``URL`` object: ``str()`` of it hides the password.
    """
    if all(_env(name) for name in _PARTS):
        port = _env("POSTGRES_PORT") or "5432"
        if not port.isdigit():
            raise RuntimeError(f"POSTGRES_PORT must be a number, got {port!r}")
        return URL.create(
            DRIVER,
            username=_env("POSTGRES_USER"),
            password=os.environ.get("POSTGRES_PASSWORD") or None,
            host=_env("POSTGRES_HOST"),
            port=int(port),
            database=_env("POSTGRES_DB"),
        )

    raw = _env("DATABASE_URL")
    if raw:
        try:
            url = make_url(raw)
        except Exception:  # the message could echo the password: don't chain it
            raise RuntimeError("DATABASE_URL is not a valid database URL") from None
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername=DRIVER)
        return url

    missing = ", ".join(name for name in _PARTS if not _env(name))
    raise RuntimeError(
        "No database configured: set POSTGRES_HOST, POSTGRES_USER and POSTGRES_DB "
        "(plus POSTGRES_PASSWORD / POSTGRES_PORT as needed), or DATABASE_URL. "
        f"Missing: {missing}; DATABASE_URL is not set."
    )
