"""Which database a locator names: a ``postgresql://`` URL (PostgreSQL, the password from the
environment, never from the URL) or a path (SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from router.secrets import read_secret
from router.store.database import Database, SqliteDatabase

if TYPE_CHECKING:
    from config.schema import DatabaseConfig

SQLITE_FILE = "radrouter.sqlite3"

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(locator: str) -> bool:
    return locator.startswith(POSTGRES_SCHEMES)


def database_at(locator: str | Path, *, password: str | None = None) -> Database:
    """The database at ``locator``, its schema brought up to date."""
    if isinstance(locator, str) and is_postgres_url(locator):
        from router.store.postgres import PostgresDatabase, PostgresSettings

        return PostgresDatabase(PostgresSettings(locator, password))
    return SqliteDatabase(Path(locator))


def open_configured(settings: DatabaseConfig, data_dir: Path) -> Database:
    """The database ``storage.database`` names: SQLite in ``data_dir`` or PostgreSQL (its
    password read from the environment or a file). Raises ``SecretError`` for a named
    password that is not there, and the engine's error when the server cannot be reached."""
    if settings.engine == "sqlite" or settings.url is None:
        return SqliteDatabase(data_dir / SQLITE_FILE)
    password = read_secret(
        settings.password_env, settings.password_file, "storage.database password"
    )
    return database_at(settings.url, password=password)
