"""The task store's schema, migrated with Alembic on SQLite and PostgreSQL alike.

:func:`upgrade` brings a database to the newest revision; :class:`frontend.hallo2.tasks.TaskStore` runs it when it
opens one, and ``python -m frontend.hallo2 migrate`` runs it alone (a Kubernetes init step, or before a rollout).
Several processes may start at once: the upgrade runs under a lock (PostgreSQL: a transaction-scoped advisory lock;
an SQLite file: an exclusive lock on ``<file>.migrate.lock``), so one migrates and the others find it done.

A database created before migrations existed (its tables made by ``create_all``, no version table) has exactly
revision ``0001``'s schema: it is stamped at ``0001`` and upgraded from there, its tasks untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "hallo2_alembic_version"  # the database may be shared with other applications' own alembic_version
BEFORE_MIGRATIONS = "0001"
_ADVISORY_LOCK_KEY = 0x4A11_0002  # any constant of our own: pg_advisory_xact_lock takes a bigint

# every store checks the revision when it opens: at INFO alembic would log a dozen lines each time; a migration that
# really runs is logged by upgrade() below
logging.getLogger("alembic").setLevel(logging.WARNING)
log = logging.getLogger(__name__)


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    return ScriptDirectory.from_config(config).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with open(f"{Path(database).expanduser().resolve()}.migrate.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(engine: Engine) -> str:
    """Migrate to the newest revision (nothing to do when there already); the revision it is at."""
    with _file_lock(engine), engine.begin() as connection:
        if engine.url.get_backend_name() == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
        tables = set(inspect(connection).get_table_names())
        config = _config(connection)
        if "hallo2_tasks" in tables and VERSION_TABLE not in tables:
            log.info("hallo2 task database from before migrations: stamped at revision %s", BEFORE_MIGRATIONS)
            command.stamp(config, BEFORE_MIGRATIONS)
        before = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
        command.upgrade(config, "head")
    if before != head():
        log.info("hallo2 task database migrated from revision %s to %s", before, head())
    return head()
