"""The static typing checks in tests/typing can fail.

``make typecheck`` runs ``mypy tests/typing`` (strict, from pyproject.toml). A
check that cannot fail proves nothing, so here mypy runs on the same model with
deliberate type errors and must report each of them, on its line, with its
error code, and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ROOT / "tests" / "typing" / "check_types.py"

# Each line ending in "# expect: <code>" must get exactly that mypy error.
WRONG = '''
def wrong(user: User) -> None:
    number: int = user.full_name  # expect: assignment
    assert_type(user.address, int)  # expect: assert-type
    assert_type(user.full_name, tuple[str, str])  # expect: assert-type
    assert_type(select(User.full_name), Select[tuple[int]])  # expect: assert-type
    text: Transform[str] = Transform.cast(int, Integer())  # expect: arg-type
    user.full_name = 3  # expect: assignment
    attribute: QueryableAttribute[int] = User.full_name  # expect: assignment
'''

_ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<message>.*)\[(?P<code>[\w-]+)\]$")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for this module: the second run reuses the first's analysis."""
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(target: Path, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    # From the project root, so the [tool.mypy] section (strict = true) applies.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir), str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _header_of_checks() -> str:
    """check_types.py up to its model declarations (the imports and ``User``)."""
    source = CHECKS.read_text()
    end = source.index("# -- transforms")
    return source[:end]


def test_the_typing_checks_pass(cache_dir: Path) -> None:
    result = _mypy(CHECKS.parent, cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_the_typing_checks_can_fail(tmp_path: Path, cache_dir: Path) -> None:
    source = _header_of_checks() + WRONG
    target = tmp_path / "wrong_types.py"
    target.write_text(source)
    expected = {
        number: line.rsplit("# expect: ", 1)[1].strip()
        for number, line in enumerate(source.splitlines(), start=1)
        if "# expect: " in line
    }
    assert len(expected) == 7

    result = _mypy(target, cache_dir)

    assert result.returncode == 1, result.stdout + result.stderr
    reported: dict[int, list[str]] = {}
    for line in result.stdout.splitlines():
        match = _ERROR.match(line)
        if match:
            reported.setdefault(int(match["line"]), []).append(match["code"])
    assert reported == {number: [code] for number, code in expected.items()}, result.stdout
    # the messages speak of the value type of the forward transform
    assert 'expression has type "tuple[str, str | None]", variable has type "int"' in (
        result.stdout
    )
