"""Fixtures of the unit tests: the connection parts alone (tests/lib/parts.py)."""

from __future__ import annotations

import pytest

from parts import Daemon, Env


@pytest.fixture
def env():
    """A Loop with a fake clock, an owner recording what the parts report, and socketpairs."""
    e = Env()
    yield e
    e.close()


@pytest.fixture
def make_env():
    """make_env(*command_line_args) -> Env, for settings other than the defaults; all closed at
    teardown."""
    made: list[Env] = []

    def factory(*args: str) -> Env:
        made.append(Env(*args))
        return made[-1]

    yield factory
    for e in made:
        e.close()


@pytest.fixture
def daemon(env):
    """A listening unix socket at env.sock_path; the test speaks raw HTTP on it."""
    d = Daemon(env.sock_path)
    yield d
    d.close()
