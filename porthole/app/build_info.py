"""build_info: the commit and build date `porthole --version` prints.

A frozen build carries them in porthole/app/_build.py, which build.sh writes into its copy of
the sources (never into the checkout): COMMIT, and BUILD_DATE from SOURCE_DATE_EPOCH, so two
builds of one commit stay identical. Run from a checkout, the commit is git's, and the date is
"unknown" (nothing was built)."""
from __future__ import annotations

import os

UNKNOWN = "unknown"


def build_info() -> tuple[str, str]:
    """(commit, build date as YYYY-MM-DD), "unknown" for what cannot be known."""
    try:
        from porthole.app import _build  # type: ignore[attr-defined]  # written by build.sh only
    except ImportError:
        return _checkout_commit(), UNKNOWN
    return _build.COMMIT, _build.BUILD_DATE


def _checkout_commit() -> str:
    """The checkout's commit (short), or "unknown" outside a git checkout or without git."""
    try:
        import subprocess  # only here: the frozen program never reaches it (and excludes it)
        here = os.path.dirname(os.path.abspath(__file__))
        found = subprocess.run(["git", "-C", here, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                               text=True, timeout=5)
    except (ImportError, OSError, ValueError):  # no git (or no subprocess)
        return UNKNOWN
    commit = found.stdout.strip()
    return commit if found.returncode == 0 and commit else UNKNOWN
