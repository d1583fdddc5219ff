"""forwarded_request, the one place a request for the daemon is built, builds GET and HEAD only
(decide.py invariant 1), whatever its caller asks: no path through the proxy can build a write."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from porthole.core.decide import NotReadOnly, forwarded_request
from porthole.core.target import canonicalize_target

TARGET = canonicalize_target(b"/v1.41/containers/json?all=1")
HEADERS = [(b"user-agent", b"t"), (b"accept", b"*/*"), (b"x-registry-auth", b"secret"), (b"cookie", b"c")]
TOKEN = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&'*+-.^_`|~0123456789",
                min_size=1, max_size=12)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_reads_are_built_canonical_with_allowlisted_headers(method):
    request = forwarded_request(method, TARGET, HEADERS)
    assert request.method == method.encode()
    assert request.target == b"/v1.41/containers/json?all=1"
    assert list(request.headers) == [(b"host", b"docker"), (b"user-agent", b"t"), (b"accept", b"*/*")]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "CONNECT", "OPTIONS", "TRACE", "get", "head"])
def test_anything_else_is_never_built(method):
    with pytest.raises(NotReadOnly, match="read-only"):
        forwarded_request(method, TARGET, HEADERS)


@given(TOKEN)
def test_no_method_but_get_and_head_is_ever_built(method):
    if method in ("GET", "HEAD"):
        assert forwarded_request(method, TARGET, HEADERS).method == method.encode()
    else:
        with pytest.raises(NotReadOnly):
            forwarded_request(method, TARGET, HEADERS)
