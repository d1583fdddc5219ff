"""Every numeric option is a positive, finite number, from the command line or PORTHOLE_*
(issue "(2 of 5)", item 8): `--idle-timeout nan` used to be accepted, and one NaN deadline broke
the loop's heap (no 408, no idle close; the loop spun hundreds of thousands of passes a second)."""
from __future__ import annotations

import pytest

from porthole.app.settings import _NUMERIC_OPTIONS, parse_settings
from porthole.runtime.config import UsageError

FLOATS = [name for name, kind, _, _ in _NUMERIC_OPTIONS if kind is float]
NOT_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"]


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", FLOATS)
def test_a_flag_that_is_not_finite_is_refused(name, value):
    with pytest.raises(UsageError, match=f"--{name} must be a positive, finite number"):
        parse_settings([f"--{name}={value}"], {})


@pytest.mark.parametrize("value", NOT_FINITE)
@pytest.mark.parametrize("name", FLOATS)
def test_a_variable_that_is_not_finite_is_refused(name, value):
    with pytest.raises(UsageError, match=f"--{name} must be a positive, finite number"):
        parse_settings([], {"PORTHOLE_" + name.upper().replace("-", "_"): value})


@pytest.mark.parametrize("name", [name for name, _, _, _ in _NUMERIC_OPTIONS])
def test_zero_and_negative_are_refused_and_a_number_is_taken(name):
    for value in ("0", "-1"):
        with pytest.raises(UsageError):
            parse_settings([f"--{name}={value}"], {})
    settings = parse_settings([f"--{name}", "7"], {})
    assert getattr(settings, name.replace("-", "_")) == 7


def test_watch_rules_is_finite_too():
    for value in ("nan", "inf", "-1"):
        with pytest.raises(UsageError, match="--watch-rules"):
            parse_settings([f"--watch-rules={value}"], {})
