"""Alembic environment of the reference example (``users.name`` -> first/last name).

``import fourstep_sqla.alembic`` is all it takes: the operations exist and the
autogenerate comparator is active. The database URL comes from the Alembic
config (``sqlalchemy.url``) or ``FOURSTEP_DATABASE_URL``.
"""

import os

from alembic import context
from sqlalchemy import create_engine

import fourstep_sqla.alembic  # noqa: F401

config = context.config
url = config.get_main_option("sqlalchemy.url") or os.environ.get("FOURSTEP_DATABASE_URL")
if not url:
    raise SystemExit("set sqlalchemy.url in alembic.ini or FOURSTEP_DATABASE_URL")


def run_migrations_offline() -> None:
    context.configure(url=url, literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url)
    # engine.connect(), not engine.begin(): op.backfill commits batch by batch
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
