"""``flask fourstep``: status, backfill, verify and revision inside a Flask app.

With Flask-SQLAlchemy and Flask-Migrate, the ``fourstep`` commands run where
``flask db`` runs, on what the app declares::

    flask --app flaskr fourstep status [--check] [KEY ...]
    flask --app flaskr fourstep backfill [KEY ...] [--max-seconds 600] [--workers 4] ...
    flask --app flaskr fourstep verify [KEY ...]
    flask --app flaskr fourstep revision --step 1|2|3|4 KEY -m MESSAGE

Installing ``fourstep-sqla`` registers the group through Flask's
``flask.commands`` entry point: nothing to add to the app. Each command runs in
the app context (:func:`flask.cli.with_appcontext`) and takes from the app

- the **database**: Flask-SQLAlchemy's engine, ``db.engine``
  (``SQLALCHEMY_DATABASE_URI``, ``SQLALCHEMY_ENGINE_OPTIONS``);
- the **phased attributes**: those declared on the models of the app's ``db``
  (``db.Model``, or ``SQLAlchemy(model_class=Base)``) that the app has
  imported once created: import the models in ``create_app()``, as Flask-Migrate
  needs too;
- for ``revision``, the **migrations directory**: Flask-Migrate's
  (``Migrate(app, db, directory=...)``, default ``migrations``), through
  Flask-Migrate's own configuration, so its ``env.py`` runs in the app context
  as under ``flask db``.

So there is no ``--url``, ``--config`` or ``--models``, and no ``FOURSTEP_*``
variable. Everything else is the plain command's (:mod:`fourstep_sqla.cli`,
``flask fourstep backfill --help``): the options and their ranges, a
progress bar on a terminal and JSON lines otherwise (or with ``--json``), and
the exit codes: 0 done and consistent; 1 a backfill failed or skipped rows,
``verify`` found missing or mismatched rows, ``status --check`` found the code
does not fit the database; 2 usage or configuration error; 3 the time budget
ran out with rows left (run again to resume).

Set-up, once
------------
After ``flask db init``, add one line to ``migrations/env.py``, so that
``flask db migrate`` writes the Four Step operations and every ``flask db
upgrade`` is lock-safe::

    from alembic import context

    import fourstep_sqla.alembic  # noqa: F401

and prefer one transaction per revision: ``Migrate(app, db,
transaction_per_migration=True)``. An app laid out as the Flask tutorial lays
one out::

    # flaskr/__init__.py
    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    migrate = Migrate()

    def create_app():
        app = Flask(__name__)
        app.config.from_prefixed_env()          # FLASK_SQLALCHEMY_DATABASE_URI=...
        db.init_app(app)
        migrate.init_app(app, db, transaction_per_migration=True)
        from . import models  # noqa: F401  (the models, with their phased attributes)
        return app

    # flaskr/models.py
    from fourstep_sqla import Phase, Transform, phased
    from . import db

    class User(db.Model):
        __tablename__ = "users"
        id = db.Column(db.Integer, primary_key=True)
        legacy_name = db.Column("name", db.String(80), nullable=False)
        first_name = db.Column(db.String(40))
        last_name = db.Column(db.String(40))
        full_name = phased(old="legacy_name", new=("first_name", "last_name"),
                           forward=Transform.split(" "), backward=Transform.join(" "),
                           phase=Phase.WRITE_BOTH)

Then each step is ``flask db migrate`` (or ``flask fourstep revision --step N
KEY``), ``flask db upgrade``, and ``flask fourstep status`` / ``backfill`` /
``verify`` to look and to move the data, as in the README's walkthrough.

In tests, as for any Flask command::

    from fourstep_sqla.flask import fourstep

    result = app.test_cli_runner().invoke(fourstep, ["verify", "users.full_name"])
    assert result.exit_code == 0, result.output

The plain ``fourstep`` command pointed at a Flask-Migrate ``env.py`` (which
runs only inside the app) says to run ``flask fourstep`` instead.

Limits: the commands work on the default bind (``db.engine`` and the models
of ``db.metadata``); models of ``SQLALCHEMY_BINDS`` are not listed. ``backfill
--workers N`` holds ``2N + 2`` connections of the app's pool (Flask-SQLAlchemy's
default pool gives 15; raise ``pool_size`` in ``SQLALCHEMY_ENGINE_OPTIONS`` for
more workers). Flask-Migrate's ``env.py`` calls ``fileConfig()``, which turns
off the loggers that exist already, the library's among them: name
``fourstep_sqla`` in the ``[loggers]`` of ``migrations/alembic.ini`` to keep the
backfill's and the lock retries' log lines under ``flask db upgrade``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click
from flask import current_app
from flask.cli import with_appcontext

from .errors import FourStepError

if TYPE_CHECKING:
    from alembic.config import Config

    from .cli import Application

__all__ = ["FlaskAppError", "fourstep"]

PROG = "flask fourstep"


class FlaskAppError(FourStepError):
    """The Flask app lacks what a ``flask fourstep`` command needs
    (Flask-SQLAlchemy, phased attributes, Flask-Migrate's directory)."""


@click.group(name="fourstep")
def fourstep() -> None:
    """Status, backfill, verify and revision of phased attributes (fourstep_sqla).

    The database, the models and the migrations directory are the app's
    (Flask-SQLAlchemy, Flask-Migrate). Options: flask fourstep COMMAND --help.
    """


def _command(name: str, summary: str) -> None:
    """``flask fourstep NAME ...``: the plain command's ``NAME``, options passed
    on as they are, run in the app context."""

    @fourstep.command(
        name,
        help=f"{summary}. Options: flask fourstep {name} --help.",
        short_help=summary,
        add_help_option=False,  # --help is the plain command's, with its options
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @with_appcontext
    def run(args: tuple[str, ...]) -> None:
        from .cli import run_application

        code = run_application([name, *args], _application, prog=PROG)
        click.get_current_context().exit(code)


_command("status", "Phase, pending rows, backfill and verify state")
_command("backfill", "Write new = forward(old) in batches; resumable")
_command("verify", "Compare the old and the new places, row by row")
_command("revision", "Write a step's revision into the Flask-Migrate directory")


def _application() -> Application:
    """The current app's engine, phased attributes and Alembic configuration."""
    from .cli import Application
    from .registry import all_specs

    app = current_app
    name = f"the Flask app {app.import_name!r}"
    db: Any = app.extensions.get("sqlalchemy")
    if db is None:
        raise FlaskAppError(
            f"{name} has no Flask-SQLAlchemy extension (app.extensions['sqlalchemy']): "
            f"create it with db = SQLAlchemy() and db.init_app(app) in the app factory"
        )
    metadata = db.metadata
    specs = [
        spec for spec in all_specs()
        if spec.table is not None and spec.table.metadata is metadata
    ]
    if not specs:
        raise FlaskAppError(
            f"{name} declares no phased attributes on the models of its db (db.Model): "
            f"import the models module in create_app(), and declare phased(...) on a model"
        )
    return Application(
        name=name, engine=db.engine, specs=specs, alembic_config=_alembic_config
    )


def _alembic_config() -> Config:
    """Flask-Migrate's configuration of the current app's migrations directory."""
    app = current_app
    migrate: Any = app.extensions.get("migrate")
    if migrate is None:
        raise FlaskAppError(
            f"the Flask app {app.import_name!r} has no Flask-Migrate (Migrate(app, db)): "
            f"revision writes into its migrations directory; set up Flask-Migrate, then "
            f"run `flask db init`"
        )
    directory = str(migrate.directory)
    if not os.path.isfile(os.path.join(directory, "env.py")):
        raise FlaskAppError(
            f"no Flask-Migrate environment in {os.path.abspath(directory)!r} (no env.py): "
            f"run `flask db init` first, and add `import fourstep_sqla.alembic` to the "
            f"env.py it writes"
        )
    config: Config = migrate.migrate.get_config(directory)
    return config
