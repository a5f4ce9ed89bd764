"""The ``fourstep`` command line: status, backfill and verify of phased attributes.

Usage::

    fourstep COMMAND [OPTIONS] [KEY ...]

``KEY`` is a registry key such as ``users.full_name`` (``"<table>.<attribute>"``,
or the ``key=`` given to ``phased()``). Without keys, a command works on every
phased attribute of the models module, in key order.

Commands
--------
``status``
    For each phased attribute: the phase declared in code, the rows of its
    table, the rows still pending (the backfill's own predicate: every new
    column NULL, some old column not NULL and ``forward(old)`` not empty; in
    Python mode the transform is applied to the candidate rows to tell), the
    rows the backfill skipped, the status of the last backfill run and the last
    verification (when, ok, missing, mismatched). Read-only.
``backfill``
    Write ``new = forward(old)`` into every pending row, in primary-key batches,
    each committed with its progress: a run stopped at any moment (Ctrl-C, a
    deploy timeout, ``kill -9``) resumes after its last committed batch when
    started again. Options:

    ``--batch-size N``      rows in the first batch, 1 to 100000 (default 4000),
                            then adapted toward ``--target-ms``
    ``--target-ms MS``      target duration of one batch, 0 to 10000 (default
                            40); 0 keeps the batch size fixed
    ``--pause-ms MS``       sleep between batches, 0 to 60000 (default 0)
    ``--max-seconds S``     time budget for the whole command, above 0 and at
                            most 604800 (a week); when it runs out the command
                            stops after the batch in flight (exit 3)
    ``--workers N``         threads sharing the key ranges, 1 to 32 (default 1;
                            on SQLite the ranges run one after the other)
    ``--on-error stop|skip`` when the transform fails on a row: stop, writing
                            nothing of that batch (default), or record the row
                            in ``fourstep_skipped`` and go on (exit 1 at the end)
    ``--dry-run``           count the pending rows; write nothing
    ``--repair``            rewrite ``new = forward(old)`` in every row whose two
                            places disagree (missing or mismatched, as ``verify``
                            counts them), not only where the new place is empty:
                            for rows written past the sync triggers, or before
                            them. The old place wins. A run of its own, resumable.
    ``--lock-timeout-ms MS`` how long a batch waits for a lock, 1 to 60000: PostgreSQL's
                            lock_timeout (capped below half of the server's
                            deadlock_timeout); on MariaDB/MySQL rounded up to
                            whole seconds
``verify``
    Sort every row by how its places relate (read-only; see
    :mod:`fourstep_sqla.verify`): missing, mismatched (exit 1), lossy (the drop
    refuses them unless told to accept the loss) and unstable (a warning), and
    record the result for ``status``. Options: ``--batch-size N`` (rows per scan
    batch, 1 to 1000000, default 50000), ``--sample-size N`` (keys of bad rows
    to show, 1 to 1000, default 10).
    ``status --check`` also runs the deploy-order guard (:func:`fourstep_sqla.check`)
    and exits 1 when this code must not run on this database.
``revision --step 1|2|3|4 KEY -m MESSAGE``
    Write the Alembic revision of that step for one phased attribute, without
    autogenerate: the same operations the autogenerate comparator emits, with
    the transforms' SQL rendered for the database's dialect. Uses
    ``alembic.ini`` (or ``--config``) for the script location.
``demo [--url URL]``
    Walk the four steps on an embedded SQLite file (or ``--url``), narrated:
    data, each step's upgrade, writes through the phased attribute with a
    live writer, backfill, verify, drop, and a downgrade that restores every
    value. Needs no models module.

Common options (after the command)
----------------------------------
``--url URL``       the database (SQLAlchemy URL). Else ``FOURSTEP_DATABASE_URL``,
                    else ``sqlalchemy.url`` of the ``[alembic]`` section of
                    ``alembic.ini`` in the current directory (``%(here)s`` is
                    the file's directory; a literal ``%`` is written ``%%``,
                    as Alembic reads it).
``--config PATH``   read that ini file instead of ``./alembic.ini``.
``--models MODULE`` the models module, dotted (``myapp.models``), imported with
                    the current directory on ``sys.path``. Else ``FOURSTEP_MODELS``.
``--json``          JSON lines on stdout even on a terminal.
``-v``, ``--verbose``  log to stderr (``-v`` info, ``-vv`` debug, ``-vvv`` SQL too).

Output
------
On a terminal: tables and a progress bar (rows/s, ETA). Otherwise, or with
``--json``: one JSON object per line, each with an ``"event"`` field:

- ``status``: key, table, phase, phase_number, recorded_phase, mode, old, new,
  rows_total, rows_pending, skipped, run_status, rows_updated, verified_at,
  verify_ok, verify_total, verify_missing, verify_mismatched, sync_triggers
  (installed in the database), note;
- ``progress`` (backfill, at most about one a second per attribute): key,
  rows_updated, batches, rows_pending_at_start, elapsed, rows_per_second,
  eta_seconds, batch_size, last_batch_ms;
- ``done`` (backfill, one per attribute): key, mode, rows_updated, batches,
  seconds, rows_left, skipped_keys, complete, budget_exhausted, dry_run, repair,
  dropped (step 4 done: nothing to fill), held_elsewhere (ranges another process
  running the same backfill still held when the time budget ran out);
- ``verify``: key, ok, total, missing, mismatched, sample_keys, lossy, lossy_keys,
  unstable, unstable_keys, synced, seconds, mode, dropped (step 4 done), notes (what
  to do, one line each);
- ``error``: key, error (a backfill or verification that failed).

Primary keys are shown as JSON arrays, one item per key column.

No password is ever printed: every error, JSON line, forwarded log line,
warning and traceback goes through :func:`fourstep_sqla.scrub.scrub`, which
masks the password of the URLs this run knows (``--url``,
``FOURSTEP_DATABASE_URL``, the ``sqlalchemy.url`` of the ini file) and of
anything that looks like ``scheme://user:password@host``.

Exit codes
----------
- 0: done and consistent;
- 1: a backfill failed, skipped rows or left rows pending that a writer keeps
  leaving behind, ``verify`` found missing or
  mismatched rows, or the database failed while a command ran (a connection
  the server closed or terminated is named as such: run the command again, a
  backfill resumes after its last committed batch);
- 2: usage or configuration error (bad option, a number outside its range,
  unknown key, no or unreachable database, models module missing or failing to
  import): one line on stderr, starting with ``fourstep: error:``;
- 3: ``backfill`` did not finish: its ``--max-seconds`` budget ran out with
  rows left (or while it waited for ranges another process running the same
  backfill holds); run it again to resume;
- 130: interrupted (Ctrl-C); a backfill resumes where it stopped.
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import decimal
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy import Engine, create_engine, func, inspect, make_url, select
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchModuleError,
    PendingRollbackError,
    SQLAlchemyError,
)

from .backfill import (
    DEFAULT_FIRST_BATCH,
    BackfillProgress,
    BackfillReport,
    backfill,
    pending_count,
)
from .errors import FourStepError, NoSyncTriggersWarning
from .registry import all_specs, load_models
from .runner import MAX_BATCH
from .scrub import scrub
from .state import AttributeState, read_state
from .triggers import triggers_present
from .verify import VerifyResult, verify

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from rich.console import Console

    from .attribute import PhasedSpec

__all__ = ["Application", "main", "run_application"]

PROG = "fourstep"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_INTERRUPTED = 130

#: seconds between two JSON progress events of one attribute
PROGRESS_INTERVAL = 1.0


log = logging.getLogger("fourstep_sqla.cli")


class UsageError(Exception):
    """Bad input or configuration: one line on stderr, exit 2."""


# -- what is shown: one line, no password --------------------------------------
#: the database URLs this run has seen (``--url``, ``FOURSTEP_DATABASE_URL``,
#: alembic.ini's ``sqlalchemy.url`` as written and as read): their passwords
#: are masked in everything the command prints
_known_urls: list[str] = []


def _remember_url(url: str | None) -> None:
    if url and url not in _known_urls:
        _known_urls.append(url)


def _clean(text: str) -> str:
    """``text`` with every password masked (:func:`fourstep_sqla.scrub.scrub`)."""
    return scrub(str(text), _known_urls)


def _one_line(text: str) -> str:
    """``text`` on one line: its non-empty lines joined."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _error(message: str) -> None:
    print(f"{PROG}: error: {_clean(_one_line(message))}", file=sys.stderr, flush=True)


def _stderr(text: str) -> None:
    """Write ``text`` (a warning, a traceback) to stderr, passwords masked."""
    sys.stderr.write(_clean(text))
    sys.stderr.flush()


def _clean_fields(value: Any) -> Any:
    """A JSON event's fields with every string masked (keys of rows included)."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {k: _clean_fields(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean_fields(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return _clean(str(value))


def _keys_json(keys: Sequence[Sequence[Any]]) -> list[list[Any]]:
    return [list(k) for k in keys]


def _have_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt_int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _fmt_when(value: dt.datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M")


class _Output:
    """Where results go: JSON lines, or a rich/plain rendering on a terminal."""

    def __init__(self, force_json: bool) -> None:
        tty = sys.stdout.isatty()
        self.json = force_json or not tty
        self.rich = not self.json and _have_rich()
        self._lock = threading.Lock()
        self._console: Console | None = None

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(highlight=False)
        return self._console

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, **_clean_fields(fields)}, default=_jsonable)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def text(self, line: str) -> None:
        line = _clean(line)
        if self.rich:
            self.console.print(line)
        else:
            print(line, flush=True)

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        title = _clean(title)
        rows = [[_clean(cell) for cell in row] for row in rows]
        if self.rich:
            from rich import box
            from rich.table import Table

            table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
            for i, header in enumerate(headers):
                table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
            for row in rows:
                table.add_row(*row)
            wide = self.console.options.update_width(10_000)
            if self.console.measure(table, options=wide).maximum <= self.console.width:
                self.console.print(table)
                return
            # too narrow for one line per key: one small table per key
            for row in rows:
                card = Table(title=row[0], title_justify="left", box=box.SIMPLE, show_header=False)
                card.add_column(style="bold")
                card.add_column(overflow="fold")
                for header, cell in zip(headers[1:], row[1:]):
                    card.add_row(header, cell)
                self.console.print(card)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        sys.stdout.flush()


# -- argument parsing ------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that do not exit the interpreter."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


#: the ranges of the numeric options: beyond them a value is a typo, or would
#: overflow a database integer or a sleep, or (a PostgreSQL lock_timeout below
#: 1 ms, which is 0) switch a safety off
MAX_WORKERS = 32  # two connections each: 66 of PostgreSQL's default 100
MAX_TARGET_MS = 10_000.0
MAX_PAUSE_MS = 60_000.0
MAX_SECONDS = 7 * 24 * 3600.0
MAX_LOCK_TIMEOUT_MS = 60_000.0
MAX_VERIFY_BATCH = 1_000_000
MAX_SAMPLE_SIZE = 1_000
MAX_DEMO_ROWS = 1_000_000


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, not {text!r}"
            )
        return value

    return parse


def _float_in(low: float, high: float, *, above_low: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a number from ``low`` (or above it) to ``high``."""
    allowed = (
        f"a number above {_number(low)} and at most {_number(high)}"
        if above_low
        else f"a number from {_number(low)} to {_number(high)}"
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        fits = low < value <= high if above_low else low <= value <= high
        if not fits:  # NaN fits nothing
            raise argparse.ArgumentTypeError(f"expected {allowed}, not {text!r}")
        return value

    return parse


def build_parser(prog: str = PROG, *, application: bool = False) -> argparse.ArgumentParser:
    """The argument parser of ``fourstep`` (exposed for documentation tools).

    ``application``: the commands run inside an application that gives the
    database, the models and the migrations (``flask fourstep``): no ``--url``,
    ``--config`` or ``--models``.
    """
    from . import __version__

    common = _Parser(add_help=False)
    group = common.add_argument_group("common options")
    if not application:
        group.add_argument(
            "--url", help="database URL (else FOURSTEP_DATABASE_URL, else alembic.ini)"
        )
        group.add_argument(
            "--config", metavar="PATH", help="ini file with sqlalchemy.url (default ./alembic.ini)"
        )
        group.add_argument(
            "--models", metavar="MODULE", help="models module, dotted (else FOURSTEP_MODELS)"
        )
    group.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    group.add_argument(
        "-v", "--verbose", action="count", default=0, help="log to stderr (repeat for more)"
    )
    group.add_argument("keys", nargs="*", metavar="KEY", help="registry keys (default: all)")

    parser = _Parser(
        prog=prog,
        description="Status, backfill and verification of fourstep_sqla phased attributes.",
        epilog="Exit codes: 0 done and consistent; 1 a backfill failed or skipped rows, or "
        "verify found missing/mismatched rows; 2 usage or configuration error; 3 the backfill "
        "did not finish (time budget spent) with rows left: run it again to resume.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    st = commands.add_parser(
        "status", parents=[common], help="phase, pending rows, backfill and verify state"
    )

    bf = commands.add_parser("backfill", parents=[common], help="write new = forward(old)")
    bf.add_argument("--batch-size", type=_int_in(1, MAX_BATCH), default=None, metavar="N",
                    help=f"rows in the first batch, 1 to {MAX_BATCH} "
                    f"(default {DEFAULT_FIRST_BATCH})")
    bf.add_argument("--target-ms", type=_float_in(0, MAX_TARGET_MS), default=40.0,
                    metavar="MS", help=f"target batch duration, 0 to {_number(MAX_TARGET_MS)}; "
                    f"0 keeps the batch size fixed (default 40)")
    bf.add_argument("--pause-ms", type=_float_in(0, MAX_PAUSE_MS), default=0.0, metavar="MS",
                    help=f"sleep between batches, 0 to {_number(MAX_PAUSE_MS)} (default 0)")
    bf.add_argument("--max-seconds", type=_float_in(0, MAX_SECONDS, above_low=True),
                    default=None, metavar="S", help=f"time budget, at most {_number(MAX_SECONDS)}; "
                    f"exit 3 when it runs out with rows left")
    bf.add_argument("--workers", type=_int_in(1, MAX_WORKERS), default=1, metavar="N",
                    help=f"parallel workers, 1 to {MAX_WORKERS} (default 1)")
    bf.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                    help="when the transform fails on a row (default stop)")
    bf.add_argument("--dry-run", action="store_true", help="count pending rows, write nothing")
    bf.add_argument("--repair", action="store_true",
                    help="rewrite new = forward(old) wherever the two places disagree")
    bf.add_argument("--lock-timeout-ms", type=_float_in(1, MAX_LOCK_TIMEOUT_MS), default=None,
                    metavar="MS", help=f"how long a batch waits for a lock, 1 to "
                    f"{_number(MAX_LOCK_TIMEOUT_MS)} (MariaDB/MySQL: whole seconds)")

    vf = commands.add_parser("verify", parents=[common], help="compare forward(old) with new")
    vf.add_argument("--batch-size", type=_int_in(1, MAX_VERIFY_BATCH), default=50_000,
                    metavar="N", help=f"rows per scan batch, 1 to {MAX_VERIFY_BATCH} "
                    f"(default 50000)")
    vf.add_argument("--sample-size", type=_int_in(1, MAX_SAMPLE_SIZE), default=10, metavar="N",
                    help=f"keys of bad rows to report, 1 to {MAX_SAMPLE_SIZE} (default 10)")

    st.add_argument("--check", action="store_true",
                    help="exit 1 when this code's phases do not fit the database")

    rv = commands.add_parser("revision", parents=[common],
                             help="write the Alembic revision of a step (2, 3 or 4)")
    rv.add_argument("--step", type=int, choices=(1, 2, 3, 4), required=True)
    rv.add_argument("-m", "--message", default=None)

    dm = commands.add_parser("demo", help="walk the four steps on an embedded SQLite database")
    dm.add_argument("--url", default=None, help="database URL (default: a new SQLite file)")
    dm.add_argument("--rows", type=_int_in(1, MAX_DEMO_ROWS), default=5000,
                    help=f"rows to start with, 1 to {MAX_DEMO_ROWS} (default 5000)")
    return parser


# -- configuration -----------------------------------------------------------------
def _setup_logging(verbosity: int) -> None:
    class _StderrHandler(logging.Handler):
        # writes to whatever sys.stderr is now (rich redirects it under a live display)
        def emit(self, record: logging.LogRecord) -> None:
            try:
                _stderr(self.format(record) + "\n")
            except Exception:
                self.handleError(record)

    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("fourstep_sqla")
    ours.addHandler(handler)
    ours.propagate = False
    ours.setLevel(
        logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    )
    if verbosity >= 3:
        sql = logging.getLogger("sqlalchemy.engine")
        sql.addHandler(handler)
        sql.setLevel(logging.INFO)


def _ini_path(args: argparse.Namespace) -> str:
    config = getattr(args, "config", None)  # ``demo`` has no --config
    return str(config) if config else "alembic.ini"


def _remember_urls(args: argparse.Namespace) -> None:
    """Note every URL this run may show, before anything can fail: an import
    error of the models module or a bad alembic.ini may quote one."""
    _remember_url(getattr(args, "url", None))
    _remember_url(os.environ.get("FOURSTEP_DATABASE_URL", "").strip())
    path = _ini_path(args)
    if not os.path.isfile(path):
        return
    raw = configparser.RawConfigParser()
    try:
        raw.read(path, encoding="utf-8")
        written = raw.get("alembic", "sqlalchemy.url", fallback="").strip()
    except (configparser.Error, UnicodeDecodeError):
        return
    _remember_url(written)
    # as configparser (and so Alembic) reads it: "%%" is "%"
    _remember_url(written.replace("%%", "%"))


def _resolve_url(args: argparse.Namespace) -> tuple[str, str]:
    """The database URL and where it came from."""
    if args.url:
        return _synchronous(str(args.url), "--url"), "--url"
    env = os.environ.get("FOURSTEP_DATABASE_URL", "").strip()
    if env:
        return _synchronous(env, "FOURSTEP_DATABASE_URL"), "FOURSTEP_DATABASE_URL"
    path = _ini_path(args)
    if not os.path.isfile(path):
        if args.config:
            raise UsageError(f"--config {path}: no such file")
        raise UsageError(
            "no database URL: pass --url, set FOURSTEP_DATABASE_URL, or run where an "
            "alembic.ini sets sqlalchemy.url (or point --config at one)"
        )
    ini = configparser.ConfigParser(
        defaults={"here": os.path.dirname(os.path.abspath(path))}
    )
    try:
        ini.read(path, encoding="utf-8")
        url = ini.get("alembic", "sqlalchemy.url", fallback="").strip()
    except configparser.InterpolationError as exc:
        raise UsageError(_interpolation_problem(path, exc)) from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not url:
        raise UsageError(
            f"no database URL: {path} sets no sqlalchemy.url in its [alembic] section; "
            f"pass --url or set FOURSTEP_DATABASE_URL"
        )
    _remember_url(url)
    return _synchronous(url, path), path


def _interpolation_problem(path: str, exc: configparser.InterpolationError) -> str:
    """What is wrong with a value of ``path``, without quoting it: configparser's
    own message quotes the value, password included."""
    where = f"{path}: {exc.option} in [{exc.section}]"
    if isinstance(exc, configparser.InterpolationSyntaxError):
        return (
            f"{where} has a '%' followed by neither '%' nor '(': write each '%' of the "
            f"value (a percent-encoded password, say) as '%%'; Alembic reads the file "
            f"the same way"
        )
    if isinstance(exc, configparser.InterpolationMissingOptionError):
        return (
            f"{where} refers to %({exc.reference})s, which [{exc.section}] does not set "
            f"(%(here)s, the file's directory, is the only one predefined); set it, or "
            f"write a literal '%' as '%%'"
        )
    return (
        f"{where} cannot be interpolated ({type(exc).__name__}); write a literal '%' as '%%'"
    )


def _synchronous(url_text: str, source: str) -> str:
    """``url_text``, or when it names an async driver (asyncpg, aiosqlite, aiomysql,
    asyncmy, ...) the URL of the matching synchronous one: the command line is
    synchronous. A usage error names the package to install when it is missing."""
    try:
        url = make_url(url_text)
        is_async = url.get_dialect().is_async
    except (ArgumentError, ValueError, ImportError):
        return url_text  # not a URL, or an unknown dialect: _connect says so
    if not is_async:
        return url_text
    from .asyncio import AsyncDriverError, sync_url

    shown = url.render_as_string(hide_password=True)
    try:
        sync = sync_url(url)
    except AsyncDriverError as exc:
        raise UsageError(f"cannot use database URL {shown} (from {source}): {exc}") from None
    text = sync.render_as_string(hide_password=False)
    _remember_url(text)
    log.info("%s (from %s) names an async driver; the command line uses %s", shown, source,
             sync.drivername)
    return text


def _connect(url_text: str, source: str, workers: int) -> Engine:
    """An engine on ``url_text`` (through the synchronous twin of an async driver),
    connected once to fail early and clearly."""
    url_text = _synchronous(url_text, source)
    try:
        url = make_url(url_text)
    except (ArgumentError, ValueError):
        raise UsageError(f"invalid database URL (from {source})") from None
    _remember_url(url.render_as_string(hide_password=False))
    shown = url.render_as_string(hide_password=True)
    kwargs: dict[str, Any] = {}
    backend = url.get_backend_name()
    if backend == "postgresql" and "connect_timeout" not in url.query:
        kwargs["connect_args"] = {"connect_timeout": 10}
    if backend != "sqlite":
        # each worker holds a batch connection and a lease connection
        kwargs["pool_size"] = max(5, 2 * workers + 2)
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ImportError, ArgumentError, TypeError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        raise UsageError(f"cannot use database URL {shown} (from {source}): {message}") from None
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        engine.dispose()
        detail = _one_line(str(exc.orig))
        raise UsageError(
            f"cannot connect to the database at {shown} (from {source}): "
            f"{type(exc.orig).__name__}: {detail}"
        ) from None
    return engine


def _load_specs(args: argparse.Namespace) -> list[PhasedSpec]:
    """Import the models module and pick the attributes named on the command line."""
    module = str(args.models or os.environ.get("FOURSTEP_MODELS", "")).strip()
    if not module:
        raise UsageError(
            "no models module: pass --models package.module or set FOURSTEP_MODELS"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        with warnings.catch_warnings(record=True) as caught:
            # declaring a Python-only transform warns in the application; here the
            # status shows its mode, and -v the warning itself
            warnings.simplefilter("always", NoSyncTriggersWarning)
            found = load_models(module)
    except FourStepError as exc:
        raise UsageError(str(exc)) from None
    for warning in caught:
        if issubclass(warning.category, NoSyncTriggersWarning):
            log.info("%s", warning.message)
        else:
            _stderr(
                warnings.formatwarning(warning.message, warning.category, warning.filename,
                                       warning.lineno, warning.line)
            )
    registered = {spec.key: spec for spec in all_specs()}
    keys: list[str] = list(dict.fromkeys(args.keys))
    if not keys:
        if not found:
            raise UsageError(f"models module {module!r} defines no phased attributes")
        return found
    unknown = [k for k in keys if k not in registered]
    if unknown:
        known = ", ".join(sorted(registered)) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise UsageError(
            f"unknown key{plural} {', '.join(repr(k) for k in unknown)}; "
            f"known keys (models module {module!r}): {known}"
        )
    return [registered[k] for k in keys]


@dataclass
class _Context:
    args: argparse.Namespace
    specs: list[PhasedSpec]
    engine: Engine
    out: _Output
    #: the application's Alembic configuration (``flask fourstep``), else alembic.ini
    alembic_config: Callable[[], AlembicConfig] | None = None


# -- status --------------------------------------------------------------------------
def _status_of(ctx: _Context, spec: PhasedSpec) -> dict[str, Any]:
    table = spec.table
    assert table is not None
    mode = "sql" if spec.forward.has_sql else "python"
    info: dict[str, Any] = {
        "key": spec.key,
        "table": table.fullname,
        "phase": spec.phase.name,
        "phase_number": int(spec.phase),
        "recorded_phase": None,
        "mode": mode,
        "old": list(spec.old),
        "new": list(spec.new),
        "rows_total": None,
        "rows_pending": None,
        "skipped": 0,
        "run_status": None,
        "rows_updated": 0,
        "verified_at": None,
        "verify_ok": None,
        "verify_total": None,
        "verify_missing": None,
        "verify_mismatched": None,
        "sync_triggers": False,
        "note": None,
    }
    with ctx.engine.connect() as conn:
        insp = inspect(conn)
        if not insp.has_table(table.name, schema=table.schema):
            info["note"] = f"table {table.fullname} does not exist"
        else:
            present = {c["name"] for c in insp.get_columns(table.name, schema=table.schema)}
            missing_new = [c.name for c in spec.new_columns if c.name not in present]
            old_there = bool(spec.old_columns) and all(
                c.name in present for c in spec.old_columns
            )
            total = conn.execute(select(func.count()).select_from(table)).scalar_one()
            info["rows_total"] = int(total)
            if missing_new:
                info["note"] = f"new column(s) {', '.join(missing_new)} do not exist yet"
            elif not old_there:
                info["rows_pending"] = 0
                info["note"] = "old column(s) dropped"
            else:
                conn.rollback()
                # the backfill's own predicate, by one COUNT (not a pass of a
                # Python transform over the table at every status)
                pending = pending_count(conn, spec, exact=False)
                info["rows_pending"] = int(pending)
                info["sync_triggers"] = triggers_present(
                    conn, spec.key, table.name, table.schema
                )
        conn.rollback()
        state: AttributeState | None = read_state(conn, spec.key)
    if state is not None:
        info.update(
            recorded_phase=state.recorded_phase,
            skipped=state.skipped,
            run_status=state.run_status,
            rows_updated=state.rows_updated,
            verified_at=state.verified_at,
            verify_ok=state.verify_ok,
            verify_total=state.verify_total,
            verify_missing=state.verify_missing,
            verify_mismatched=state.verify_mismatched,
        )
    return info


def _cmd_status(ctx: _Context) -> int:
    out = ctx.out
    code = EXIT_OK
    rows: list[list[str]] = []
    for spec in ctx.specs:
        try:
            info = _status_of(ctx, spec)
        except (SQLAlchemyError, FourStepError) as exc:
            code = EXIT_FAILED
            message = (
                f"{spec.key}: cannot read the status: "
                f"{_cause(exc, again='Run the same command again')}"
            )
            _error(message)
            if out.json:
                out.emit("error", key=spec.key, error=message)
            continue
        if out.json:
            out.emit("status", **info)
            continue
        run = info["run_status"] or "never run"
        if info["verified_at"] is None:
            checked = "never"
        elif info["verify_ok"]:
            checked = "ok"
        else:
            checked = (
                f"{info['verify_missing'] or 0:,} missing, "
                f"{info['verify_mismatched'] or 0:,} mismatched"
            )
        phase = str(info["phase_number"])
        if info["recorded_phase"] not in (None, info["phase_number"]):
            phase += f" (db {info['recorded_phase']})"
        pending = _fmt_int(info["rows_pending"])
        if info["note"]:
            pending += f" ({info['note']})"
        rows.append(
            [
                info["key"], phase, info["mode"], "yes" if info["sync_triggers"] else "no",
                _fmt_int(info["rows_total"]), pending, _fmt_int(info["skipped"]), run, checked,
                _fmt_when(info["verified_at"]),
            ]
        )
    if not out.json and rows:
        out.table(
            "fourstep status",
            ["key", "phase", "mode", "triggers", "rows", "pending", "skipped", "backfill",
             "verify", "verified at"],
            rows,
        )
    return code


# -- backfill ------------------------------------------------------------------------
def _describe(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError):
        return f"{type(exc.orig).__name__}: {_one_line(str(exc.orig))}"
    if isinstance(exc, FourStepError):
        return _one_line(str(exc))
    return f"{type(exc).__name__}: {_one_line(str(exc))}"


def _cause(exc: BaseException, *, again: str) -> str:
    """What went wrong, on one line; for a lost connection its real cause, then
    ``again`` (what to do)."""
    lost = _lost_connection(exc)
    if lost is not None:
        return f"{lost}. {again}"
    return _describe(exc)


#: PostgreSQL: the server ended the backend (administrator command, crash,
#: starting up or shutting down)
_ENDED_STATES = frozenset({"57P01", "57P02", "57P03"})
#: MySQL/MariaDB client errors: server gone away, connection lost
_MYSQL_LOST = frozenset({2006, 2013, 2055})


def _lost_connection(exc: BaseException) -> str | None:
    """Why the database connection was lost, when ``exc`` says so itself or
    was raised from, or while handling, an error that does; else None.

    SQLAlchemy refuses a connection lost inside a transaction until it is
    rolled back (``PendingRollbackError``): that refusal hides the real cause,
    which is further down the chain.
    """
    chain = _chain(exc)
    for error in chain:
        if isinstance(error, DBAPIError) and _is_disconnect(error):
            cause = f"{type(error.orig).__name__}: {_one_line(str(error.orig))}"
            if _sqlstate(error.orig) == "57P01":
                # a parallel worker of a query can be terminated alone
                whose = (
                    "this command's connection" if error.connection_invalidated
                    else "a server process working for this command"
                )
                return (
                    f"the database server terminated {whose} ({cause}; by "
                    f"pg_terminate_backend, or the server shutting down)"
                )
            return f"the database server closed the connection ({cause})"
    if any(isinstance(error, PendingRollbackError) for error in chain):
        return (
            "the connection to the database was lost inside a transaction (the server "
            "closed it or terminated its backend)"
        )
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from or while handling."""
    found: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        error = todo.pop(0)
        if error is None or any(error is seen for seen in found):
            continue
        found.append(error)
        todo.extend((error.__cause__, error.__context__))
    return found


def _sqlstate(orig: object) -> str | None:
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _is_disconnect(error: DBAPIError) -> bool:
    if error.connection_invalidated:
        return True
    state = _sqlstate(error.orig)
    if state is not None:
        return state in _ENDED_STATES or state.startswith("08")
    args: tuple[Any, ...] = getattr(error.orig, "args", ())
    return bool(args) and args[0] in _MYSQL_LOST


def _rate(p: BackfillProgress) -> tuple[float | None, float | None]:
    """Rows per second so far and seconds left (None when unknown)."""
    if p.elapsed <= 0:
        return None, None
    rate = p.rows_updated / p.elapsed
    if p.rows_pending_at_start is None or rate <= 0:
        return rate, None
    return rate, max(p.rows_pending_at_start - p.rows_updated, 0) / rate


class _JsonProgress:
    """Progress events, throttled to about one a second."""

    def __init__(self, out: _Output) -> None:
        self.out = out
        self.last = float("-inf")
        self.lock = threading.Lock()

    def __call__(self, p: BackfillProgress) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last < PROGRESS_INTERVAL:
                return
            self.last = now
        rate, eta = _rate(p)
        self.out.emit(
            "progress",
            key=p.key,
            rows_updated=p.rows_updated,
            batches=p.batches,
            rows_pending_at_start=p.rows_pending_at_start,
            elapsed=round(p.elapsed, 3),
            rows_per_second=None if rate is None else round(rate, 1),
            eta_seconds=None if eta is None else round(eta, 1),
            batch_size=p.batch_size,
            last_batch_ms=round(p.last_batch_ms, 2),
        )


class _PlainProgress:
    """A line about once a second on a terminal without rich."""

    def __init__(self) -> None:
        self.last = float("-inf")

    def __call__(self, p: BackfillProgress) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        rate, eta = _rate(p)
        total = "?" if p.rows_pending_at_start is None else f"{p.rows_pending_at_start:,}"
        speed = "" if rate is None else f", {rate:,.0f} rows/s"
        left = "" if eta is None else f", ETA {eta:,.0f} s"
        print(_clean(f"{p.key}: {p.rows_updated:,}/{total} rows{speed}{left}"), flush=True)


@contextmanager
def _progress_bar(
    out: _Output, key: str
) -> Iterator[Callable[[BackfillProgress], None]]:
    """A progress callback for one backfill, matched to the output."""
    if out.json:
        yield _JsonProgress(out)
        return
    if not out.rich:
        yield _PlainProgress()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=out.console,
        transient=False,
    )
    task = bar.add_task(key, total=None, rate="")

    def update(p: BackfillProgress) -> None:
        rate, _eta = _rate(p)
        bar.update(
            task,
            total=p.rows_pending_at_start,
            completed=p.rows_updated,
            rate="" if rate is None else f"{rate:,.0f} rows/s",
        )

    with bar:
        yield update


def _report_done(out: _Output, report: BackfillReport) -> None:
    if out.json:
        out.emit(
            "done",
            key=report.key,
            mode=report.mode,
            rows_updated=report.rows_updated,
            batches=report.batches,
            seconds=round(report.seconds, 3),
            rows_left=report.rows_left,
            skipped_keys=_keys_json(report.skipped_keys),
            complete=report.complete,
            budget_exhausted=report.budget_exhausted,
            dry_run=report.dry_run,
            repair=report.repair,
            dropped=report.dropped,
            held_elsewhere=report.held_elsewhere,
        )
        return
    if report.dropped:
        out.text(f"{report.key}: step 4 done: old column(s) dropped; nothing to backfill")
        return
    if report.dry_run:
        out.text(
            f"{report.key}: dry run: {report.rows_left:,} row(s) would be written "
            f"({report.mode} mode)"
        )
        return
    if report.complete:
        state = "complete"
    elif report.budget_exhausted and report.held_elsewhere:
        state = (
            f"time budget spent waiting for another process running this backfill "
            f"({report.held_elsewhere} range(s) it holds), {report.rows_left:,} row(s) left; "
            f"let it finish, or run again"
        )
    elif report.budget_exhausted:
        state = f"time budget spent, {report.rows_left:,} row(s) left; run again to resume"
    else:
        state = (
            f"{report.rows_left:,} row(s) still pending after the backfill's runs: a writer "
            f"keeps leaving rows with only the old place written (sync triggers missing?); "
            f"find it, then run again"
        )
    out.text(
        f"{report.key}: {report.rows_updated:,} row(s) written in {report.batches:,} "
        f"batch(es), {report.seconds:.2f} s, {report.mode} mode: {state}"
    )
    if report.skipped_keys:
        shown = ", ".join(json.dumps(list(k), default=_jsonable) for k in report.skipped_keys[:10])
        more = len(report.skipped_keys) - 10
        tail = f" and {more} more" if more > 0 else ""
        out.text(
            f"{report.key}: {len(report.skipped_keys):,} row(s) skipped (transform failed): "
            f"{shown}{tail}; see the fourstep_skipped table"
        )


def _cmd_backfill(ctx: _Context) -> int:
    args, out = ctx.args, ctx.out
    max_seconds: float | None = args.max_seconds
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    code = EXIT_OK
    for index, spec in enumerate(ctx.specs):
        budget = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            with _progress_bar(out, spec.key) as progress:
                report = backfill(
                    ctx.engine,
                    spec.key,
                    batch_size=args.batch_size,
                    target_ms=args.target_ms,
                    pause_ms=args.pause_ms,
                    max_seconds=budget,
                    workers=args.workers,
                    on_error=args.on_error,
                    dry_run=args.dry_run,
                    lock_timeout_ms=args.lock_timeout_ms,
                    repair=args.repair,
                    progress=progress,
                )
        except (FourStepError, SQLAlchemyError) as exc:
            message = f"{spec.key}: backfill failed: " + _cause(
                exc,
                again="Every batch committed before it is kept: run the same command "
                "again; the backfill resumes where it stopped",
            )
            rest = [s.key for s in ctx.specs[index + 1 :]]
            if rest:
                message += f" (not started: {', '.join(rest)})"
            if out.json:
                out.emit("error", key=spec.key, error=message)
            _error(message)
            return EXIT_FAILED
        _report_done(out, report)
        if report.skipped_keys or not (report.complete or report.dry_run
                                       or report.budget_exhausted):
            code = EXIT_FAILED  # rows failed, or stay pending whatever the time given
        elif not report.complete and not report.dry_run and code == EXIT_OK:
            code = EXIT_BUDGET
    return code


# -- verify --------------------------------------------------------------------------
def _cmd_verify(ctx: _Context) -> int:
    args, out = ctx.args, ctx.out
    code = EXIT_OK
    rows: list[list[str]] = []
    notes: list[str] = []
    for spec in ctx.specs:
        try:
            with _verify_spinner(out, spec.key) as progress:
                result = verify(
                    ctx.engine,
                    spec.key,
                    batch_size=args.batch_size,
                    sample_size=args.sample_size,
                    progress=progress,
                )
        except (FourStepError, SQLAlchemyError) as exc:
            code = EXIT_FAILED
            message = f"{spec.key}: verify failed: " + _cause(
                exc, again="Verify writes nothing: run the same command again"
            )
            if out.json:
                out.emit("error", key=spec.key, error=message)
            _error(message)
            continue
        if not result.ok:
            code = EXIT_FAILED
        if out.json:
            out.emit(
                "verify",
                key=result.key,
                ok=result.ok,
                total=result.total,
                missing=result.missing,
                mismatched=result.mismatched,
                sample_keys=_keys_json(result.sample_keys),
                lossy=result.lossy,
                lossy_keys=_keys_json(result.lossy_keys),
                unstable=result.unstable,
                unstable_keys=_keys_json(result.unstable_keys),
                synced=result.synced,
                seconds=round(result.seconds, 3),
                mode=result.mode,
                dropped=result.dropped,
                notes=_verify_notes(result),
            )
            continue
        if result.dropped:
            notes.append(f"{result.key}: step 4 done: old column(s) dropped; nothing to verify")
            continue
        sample = ", ".join(json.dumps(list(k), default=_jsonable) for k in result.sample_keys)
        rows.append(
            [
                result.key, "ok" if result.ok else "FAILED", _fmt_int(result.total),
                _fmt_int(result.missing), _fmt_int(result.mismatched), _fmt_int(result.lossy),
                _fmt_int(result.unstable), sample or "—", f"{result.seconds:.2f} s",
            ]
        )
        notes.extend(_verify_notes(result))
    if not out.json:
        if rows:
            out.table(
                "fourstep verify",
                ["key", "result", "rows", "missing", "mismatched", "lossy", "unstable",
                 "sample keys", "time"],
                rows,
            )
        for note in notes:
            out.text(note)
    return code


def _verify_notes(result: VerifyResult) -> list[str]:
    """What to do about what verify found, one line each."""
    notes = []
    if result.dropped:
        return [f"{result.key}: step 4 done: old column(s) dropped; nothing to verify"]

    def keys(found: Sequence[Sequence[Any]]) -> str:
        return ", ".join(json.dumps(list(k), default=_jsonable) for k in found)

    if not result.ok:
        notes.append(
            f"{result.key}: `fourstep backfill {result.key} --repair` writes new = "
            f"forward(old) in the missing and mismatched rows"
        )
    if result.lossy:
        notes.append(
            f"{result.key}: {result.lossy:,} row(s) would lose their exact old value in the "
            f"round trip backward(forward(old)) ({keys(result.lossy_keys)}): the drop "
            f"refuses them unless op.drop_old(..., accept_lossy=True)"
        )
    if result.unstable:
        notes.append(
            f"{result.key}: {result.unstable:,} new value(s) do not come back through "
            f"forward(backward(new)) ({keys(result.unstable_keys)}): after a downgrade past "
            f"the drop, step-1 code reads them differently"
        )
    if not result.synced:
        notes.append(
            f"{result.key}: no sync triggers: rows whose old place is empty were not "
            f"compared (a cleared old value cannot be told from a row written at step 4)"
        )
    return notes


@contextmanager
def _verify_spinner(
    out: _Output, key: str
) -> Iterator[Callable[[VerifyResult], None] | None]:
    if not out.rich:
        yield None
        return
    with out.console.status(f"verifying {key}") as status:

        def update(result: VerifyResult) -> None:
            status.update(f"verifying {key}: {result.total:,} rows checked")

        yield update


# -- entry point -----------------------------------------------------------------------
_COMMANDS: dict[str, Callable[[_Context], int]] = {
    "status": _cmd_status,
    "backfill": _cmd_backfill,
    "verify": _cmd_verify,
}


def _cmd_check(ctx: _Context) -> int:
    from .check import problems

    found = problems(ctx.engine, *ctx.specs)
    for problem in found:
        if ctx.out.json:
            ctx.out.emit("check", key=problem.key, ok=False, problem=problem.message)
        else:
            ctx.out.text(f"check: {problem.key}: {problem.message}")
    if not found:
        if ctx.out.json:
            ctx.out.emit("check", ok=True)
        else:
            ctx.out.text("check: this code fits this database")
    return EXIT_FAILED if found else EXIT_OK


def _cmd_revision(ctx: _Context, url: str) -> int:
    from alembic.config import Config

    from .alembic.revision import write_revision

    if len(ctx.specs) != 1:
        raise UsageError("revision writes one phased attribute's step: give exactly one KEY")
    if ctx.alembic_config is not None:
        try:
            config = ctx.alembic_config()
        except FourStepError as exc:  # the application has no migrations set up
            raise UsageError(str(exc)) from None
    else:
        ini = ctx.args.config or "alembic.ini"
        if not os.path.exists(ini):
            raise UsageError(f"no Alembic configuration at {ini!r}; pass --config PATH")
        config = Config(ini)
    try:
        path = write_revision(config, ctx.specs[0], int(ctx.args.step), ctx.args.message,
                              url=url)
    except Exception as exc:  # alembic's own errors (script location, env.py): one line
        _error(f"revision: {_describe(exc)}")
        return EXIT_FAILED
    if ctx.out.json:
        ctx.out.emit("revision", key=ctx.specs[0].key, step=int(ctx.args.step), path=path)
    else:
        ctx.out.text(f"wrote {path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    _known_urls.clear()
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else 2
    _remember_urls(args)
    with _scrubbed_hooks():
        return _run(args)


def _run(args: argparse.Namespace, application: Callable[[], Application] | None = None) -> int:
    command = str(args.command)
    verbosity = int(getattr(args, "verbose", 0))
    engine: Engine | None = None
    try:
        if command == "demo":
            from .demo import run_demo

            if args.url:  # unreachable: a configuration error, as for every command
                _connect(args.url, "--url", 1).dispose()
            return run_demo(
                args.url and _synchronous(args.url, "--url"),
                echo=lambda line: print(_clean(line), flush=True), rows=args.rows,
            )
        _setup_logging(verbosity)
        if application is None:
            _refuse_flask_environment(args)
            specs = _load_specs(args)
            url, source = _resolve_url(args)
            engine = _connect(url, source, int(getattr(args, "workers", 1)))
            ctx = _Context(args=args, specs=specs, engine=engine, out=_Output(bool(args.json)))
        else:  # the application's engine: used, never disposed
            ctx, url = _application_context(args, application)
        if command == "revision":
            return _cmd_revision(ctx, url)
        code = _COMMANDS[command](ctx)
        if command == "status" and args.check:
            code = max(code, _cmd_check(ctx))
        return code
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `fourstep status | head`
        sys.stderr.close()
        return EXIT_FAILED
    except (FourStepError, SQLAlchemyError) as exc:
        _error(f"{command} failed: {_cause(exc, again='Run the same command again')}")
        return EXIT_FAILED
    except Exception as exc:  # a bug, or a models module's own error: one line, masked
        if verbosity:
            _stderr("".join(traceback.format_exception(exc)))
        hint = (
            "" if verbosity or _lost_connection(exc) is not None
            else " (run with -v to see the traceback)"
        )
        _error(f"{command} failed: {_cause(exc, again='Run the same command again')}{hint}")
        return EXIT_FAILED
    finally:
        if engine is not None:
            engine.dispose()


@contextmanager
def _scrubbed_hooks() -> Iterator[None]:
    """Tracebacks Python prints by itself (an uncaught error in a thread, an
    error in a finaliser) go through the same masking while the command runs."""

    def thread_hook(hook: threading.ExceptHookArgs) -> None:
        if hook.exc_type is SystemExit:
            return
        name = hook.thread.name if hook.thread is not None else "a thread"
        _stderr(
            f"Exception in thread {name}:\n"
            + "".join(traceback.format_exception(hook.exc_type, hook.exc_value,
                                                 hook.exc_traceback))
        )

    def unraisable_hook(hook: Any) -> None:
        where = f"{hook.err_msg or 'Exception ignored in'}: {hook.object!r}\n"
        _stderr(
            where + "".join(traceback.format_exception(hook.exc_type, hook.exc_value,
                                                       hook.exc_traceback))
        )

    saved = threading.excepthook, sys.unraisablehook
    threading.excepthook, sys.unraisablehook = thread_hook, unraisable_hook
    try:
        yield
    finally:
        threading.excepthook, sys.unraisablehook = saved


# -- inside an application (``flask fourstep``) ---------------------------------------
@dataclass(frozen=True)
class Application:
    """What an application framework gives the commands in place of ``--url``,
    ``--models`` and ``alembic.ini`` (see :mod:`fourstep_sqla.flask`)."""

    #: how messages name it: "the Flask app 'flaskr'"
    name: str
    #: its engine: the commands use it and leave it open
    engine: Engine
    #: its phased attributes
    specs: Sequence[PhasedSpec]
    #: its Alembic configuration, for ``revision``; raises FourStepError when it has none
    alembic_config: Callable[[], AlembicConfig]


def run_application(
    argv: Sequence[str], application: Callable[[], Application], *, prog: str
) -> int:
    """Run one command (``argv``: ``status``, ``backfill``, ``verify`` or ``revision``
    and its options) on what ``application()`` gives; return the exit code.

    Options, output and exit codes are those of the plain command, without
    ``--url``, ``--config`` and ``--models``. ``application`` is called once the
    arguments are parsed (``--help`` needs no database); a FourStepError it
    raises is a configuration error (exit 2). The loggers the command sets up
    are put back afterwards: the application's process goes on.
    """
    _known_urls.clear()
    try:
        args = build_parser(prog, application=True).parse_args(argv)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else 2
    with _scrubbed_hooks(), _logging_kept():
        return _run(args, application)


def _application_context(
    args: argparse.Namespace, application: Callable[[], Application]
) -> tuple[_Context, str]:
    """The command's context on the application's engine, and its URL."""
    try:
        app = application()
    except FourStepError as exc:
        raise UsageError(str(exc)) from None
    url = app.engine.url.render_as_string(hide_password=False)
    _remember_url(url)
    specs = _pick_specs(args.keys, app.specs, app.name)
    try:
        with app.engine.connect():
            pass
    except DBAPIError as exc:
        shown = app.engine.url.render_as_string(hide_password=True)
        raise UsageError(
            f"cannot connect to the database at {shown} (from {app.name}): "
            f"{type(exc.orig).__name__}: {_one_line(str(exc.orig))}"
        ) from None
    out = _Output(bool(args.json))
    ctx = _Context(args=args, specs=specs, engine=app.engine, out=out,
                   alembic_config=app.alembic_config)
    return ctx, url


def _pick_specs(keys: Sequence[str], known: Sequence[PhasedSpec], where: str) -> list[PhasedSpec]:
    """The attributes ``keys`` name among ``known``; all of them without keys."""
    by_key = {spec.key: spec for spec in known}
    wanted = list(dict.fromkeys(keys))
    if not wanted:
        return list(known)
    unknown = [k for k in wanted if k not in by_key]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        raise UsageError(
            f"unknown key{plural} {', '.join(repr(k) for k in unknown)}; "
            f"known keys ({where}): {', '.join(sorted(by_key)) or 'none'}"
        )
    return [by_key[k] for k in wanted]


@contextmanager
def _logging_kept() -> Iterator[None]:
    """The loggers :func:`_setup_logging` changes, as they were, afterwards."""
    loggers = [logging.getLogger("fourstep_sqla"), logging.getLogger("sqlalchemy.engine")]
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate)
             for logger in loggers]
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


#: an env.py that imports Flask runs only inside a Flask app: Flask-Migrate's
_IMPORTS_FLASK = re.compile(
    r"^[ \t]*(?:from[ \t]+flask(?:\.\w+)*[ \t]+import\b|import[ \t]+flask\b)", re.MULTILINE
)


def _refuse_flask_environment(args: argparse.Namespace) -> None:
    """Flask-Migrate's env.py runs only inside its Flask app, which also holds the
    database URL: pointed at one, say which command runs there."""
    command = str(args.command)
    if command != "revision" and (
        args.url or os.environ.get("FOURSTEP_DATABASE_URL", "").strip()
    ):
        return  # alembic.ini is not read
    env = _flask_migrate_env(args)
    if env is not None:
        raise UsageError(
            f"this is a Flask-Migrate environment ({env} imports flask: it runs only "
            f"inside the Flask app): run `flask fourstep {command} ...` where you run "
            f"`flask db` (--app or FLASK_APP naming the app); it takes the database, the "
            f"models and the migrations directory from the app"
        )


def _flask_migrate_env(args: argparse.Namespace) -> str | None:
    """The env.py the command would use, when it imports Flask; else None.

    That of alembic.ini's ``script_location`` (Flask-Migrate's own alembic.ini
    names none: then the ini's directory); without an alembic.ini,
    ``migrations/env.py``, Flask-Migrate's default directory.
    """
    ini = _ini_path(args)
    if os.path.isfile(ini):
        parser = configparser.ConfigParser(
            defaults={"here": os.path.dirname(os.path.abspath(ini))}
        )
        try:
            parser.read(ini, encoding="utf-8")
            location = parser.get("alembic", "script_location", fallback="").strip()
        except (configparser.Error, UnicodeDecodeError):
            return None
        directory = location or os.path.dirname(ini)
    elif args.config:
        return None  # the missing file is what to report
    else:
        directory = "migrations"
    env = os.path.join(directory, "env.py")
    try:
        with open(env, encoding="utf-8") as file:
            source = file.read()
    except (OSError, UnicodeDecodeError):
        return None
    return env if _IMPORTS_FLASK.search(source) else None


if __name__ == "__main__":
    sys.exit(main())
