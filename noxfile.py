"""Sessions: ``tests`` (the default), ``lint``, ``typecheck``.

``nox`` with no arguments runs all three, which is what CI runs.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PACKAGE = "trio_audio"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite: unit tests and end-to-end tests against real servers."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, including the flake8-async (ASYNC) rules."""
    session.install("ruff")
    session.run("ruff", "check", PACKAGE, "tests", "noxfile.py")
    session.run("ruff", "format", "--check", PACKAGE, "tests", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """strict mypy on the package."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy", PACKAGE)
