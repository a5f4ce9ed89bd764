"""Masking of database passwords in the messages fourstep_sqla shows.

A deploy log, a CI job's output or a JSON line read by another tool must never
carry a database password. Every message the ``fourstep`` command line prints
(errors, JSON lines, the log lines it forwards, the tracebacks it shows) goes
through :func:`scrub`, which replaces with ``***``:

- the password of anything that looks like a URL with credentials,
  ``scheme://user:password@host``, whether fourstep_sqla knows the URL or not
  (a models module or a driver may quote one);
- the value of ``password=...`` / ``password: ...`` (libpq connection
  strings, a driver's keyword arguments);
- the password of every URL given in ``urls``, wherever it appears on its own:
  as written, percent-decoded, percent-encoded as SQLAlchemy renders it,
  doubled ``%%`` as an ``.ini`` file holds it, and from each of its ``%`` on
  (Python's ``configparser`` quotes a value from its first bad ``%``).

::

    >>> from fourstep_sqla.scrub import scrub
    >>> scrub("cannot reach mysql://app:hunter2@db.internal/shop")
    'cannot reach mysql://app:***@db.internal/shop'
    >>> scrub("found: '%40tPw@127.0.0.1/test'", ["postgresql://app:p%40tPw@127.0.0.1/test"])
    "found: '***@127.0.0.1/test'"

On its own a known password is masked only where it is a whole word (not
inside a longer run of letters and digits), and only from three characters
on: a password such as ``postgres`` must not turn ``postgresql`` into
``***ql``, nor a one-letter one every ``a`` of a message. Inside a URL or
after ``password=`` it is always masked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote, unquote

from sqlalchemy.engine import URL, make_url

__all__ = ["MASK", "scrub"]

#: what a password is replaced with
MASK = "***"

#: ``scheme://user:password@``: the password up to the first ``@``, as SQLAlchemy
#: parses it (an ``@`` in a password must be written ``%40``)
_URL_CREDENTIALS = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<password>[^\s@]+)(?=@)"
)
#: ``password=secret``, ``password: 'secret'``, ``"password": "secret"``
_PASSWORD_SETTING = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd)['\"]?\s*[=:]\s*['\"]?)(?P<password>[^\s'\",;&)}]+)",
    re.IGNORECASE,
)
#: a known password shorter than this is masked inside URLs and settings only
_MIN_BARE = 3


def scrub(text: str, urls: Iterable[str | URL | None] = ()) -> str:
    """``text`` with every database password in it replaced by ``***``.

    :param text: a message, a log line, a JSON line, a traceback.
    :param urls: the URLs whose passwords are known (SQLAlchemy :class:`URL`
        objects or the text of a URL as written, even one SQLAlchemy cannot
        parse); ``None`` items are ignored.
    """
    text = _URL_CREDENTIALS.sub(lambda m: m["head"] + MASK, text)
    text = _PASSWORD_SETTING.sub(lambda m: m["head"] + MASK, text)
    known = tuple(sorted({_url_text(url) for url in urls if url is not None}))
    pattern = _known_passwords(known)
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return text


def _url_text(url: str | URL) -> str:
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    return str(url)


@lru_cache(maxsize=32)
def _known_passwords(urls: tuple[str, ...]) -> re.Pattern[str] | None:
    """One pattern for every form of the passwords of ``urls`` (longest first)."""
    forms: set[str] = set()
    for url in urls:
        for password in _passwords_of(url):
            forms.update(_forms_of(password))
    forms = {form for form in forms if len(form) >= _MIN_BARE and form != MASK}
    if not forms:
        return None
    alternatives = "|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def _passwords_of(url: str) -> set[str]:
    """The password of ``url`` as written and as SQLAlchemy reads it."""
    found: set[str] = set()
    written = re.match(r"\s*[^:/\s]+://[^:/@]*:(?P<password>.*)@", url, re.DOTALL)
    if written is not None:
        # up to the first "@" (SQLAlchemy's reading) and up to the last one
        greedy = written["password"]
        found.update({greedy, greedy.split("@", 1)[0]})
    try:
        parsed = make_url(url.strip())
    except Exception:  # not a URL SQLAlchemy reads (a bad "%" in an .ini file): as written
        parsed = None
    if parsed is not None and parsed.password:
        found.add(str(parsed.password))
    return {password for password in found if password}


def _forms_of(password: str) -> set[str]:
    """The ways ``password`` can appear in a message."""
    forms = {password, unquote(password), quote(password, safe=""), quote(password)}
    forms |= {form.replace("%", "%%") for form in list(forms)}
    # configparser's "found: '%...'" quotes a value from its first bad "%" on
    forms |= {form[i:] for form in list(forms) for i, c in enumerate(form) if c == "%"}
    return forms
