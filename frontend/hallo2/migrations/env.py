"""Alembic's environment for the Hallo2 task store: run by :func:`frontend.hallo2.migrations.upgrade` on the connection it
holds (under its lock), or by the ``alembic`` command with ``-x url=...``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from frontend.hallo2.tasks import Base

config = context.config
connection = config.attributes.get("connection")


def _run(connection) -> None:
    # batch mode: SQLite cannot ALTER most things in place, so a later migration copies the table instead
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      version_table="hallo2_alembic_version")
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=postgresql+psycopg://... upgrade head")
    with create_engine(url).begin() as own_connection:
        _run(own_connection)
