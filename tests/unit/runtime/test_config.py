"""porthole/runtime/config.py: listener and upstream URLs (parse_endpoint) and what it refuses."""
import pytest

from porthole.runtime.config import UsageError, parse_endpoint


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:1", "tcp://127.0.0.1", "tcp://:80", "tcp://127.0.0.1:1/path", "unix://relative.sock",
    "unix:///a.sock?mode=999", "unix:///a.sock?mode=abc", "unix:///a.sock?owner=1", "tcp://127.0.0.1:1?mode=0600",
    "tcp://127.0.0.1:99999",
])
def test_bad_listener_urls(url):
    with pytest.raises(UsageError):
        parse_endpoint(url, listener=True)


def test_upstream_takes_no_options():
    with pytest.raises(UsageError):
        parse_endpoint("unix:///var/run/docker.sock?profile=x", listener=False)
