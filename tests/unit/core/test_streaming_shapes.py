"""Which answers are streams, in Docker's API and in Podman's own (libpod), and which are known
to be finite and so may be coalesced (issue "(2 of 5)", item 3). libpod's streams used to be
taken for finite answers: coalesced, a second `podman events` watcher got its first byte only
when the first one left."""
from __future__ import annotations

import pytest

from porthole.core.decide import is_known_finite, is_streaming
from porthole.core.target import canonicalize_target


def target(raw: str):
    return canonicalize_target(raw.encode())


# What Podman's swagger (pkg/api/server/register_*.go) says streams by default, or when asked.
STREAMS = [
    "/v1.41/events", "/events?since=1m",
    "/v4.0.0/libpod/events", "/v4.3.1/libpod/events?filters=%7B%7D&since=1m&stream=true&until=",
    "/containers/c/stats", "/v1.41/containers/c/stats?stream=1",
    "/v4.0.0/libpod/containers/c/stats", "/v4.0.0/libpod/containers/stats",
    "/v4.0.0/libpod/containers/stats?interval=2&containers=c",
    "/containers/c/logs?follow=1", "/v4.0.0/libpod/containers/c/logs?follow=true&stdout=true",
    "/v4.0.0/libpod/containers/c/top?stream=true", "/v4.0.0/libpod/pods/p/top?stream=1",
    "/v4.0.0/libpod/pods/stats?stream=true", "/containers/c/top?stream=1",
]

# Finite, and known to be one document the daemon builds at once: coalesced.
KNOWN_FINITE = [
    "/_ping", "/v1.41/version", "/info", "/containers/json?all=1", "/containers/c/json",
    "/images/json", "/images/library/busybox/json", "/system/df", "/networks", "/networks/n",
    "/volumes", "/volumes/v", "/containers/c/top", "/containers/c/changes", "/images/i/history",
    "/containers/c/stats?stream=false", "/containers/c/logs?stdout=1", "/services/s/logs",
    "/v4.0.0/libpod/_ping", "/v4.0.0/libpod/info", "/v4.0.0/libpod/containers/json",
    "/v4.0.0/libpod/containers/c/json", "/v4.0.0/libpod/containers/c/exists",
    "/v4.0.0/libpod/containers/stats?stream=false",
    "/v4.0.0/libpod/pods/stats", "/v4.0.0/libpod/pods/p/top", "/v4.0.0/libpod/images/json",
]

# Finite, but not known to be one document: not coalesced, and still finite for the timeouts.
UNKNOWN = [
    "/containers/c/export", "/containers/c/archive?path=/etc", "/images/get?names=x",
    "/images/i/get", "/v4.0.0/libpod/generate/kube?names=c", "/v4.0.0/libpod/images/export",
    "/v4.0.0/libpod/volumes/v/export", "/v4.0.0/libpod/events?stream=false", "/some/future/shape",
    "/libpod",
]


@pytest.mark.parametrize("raw", STREAMS)
def test_streams_of_both_apis_are_streams(raw):
    assert is_streaming(target(raw))
    assert not is_known_finite(target(raw))


@pytest.mark.parametrize("raw", KNOWN_FINITE)
def test_known_finite_documents_are_finite_and_coalescable(raw):
    assert not is_streaming(target(raw))
    assert is_known_finite(target(raw))


@pytest.mark.parametrize("raw", UNKNOWN)
def test_what_is_not_known_finite_is_not_coalesced_but_keeps_its_timeouts(raw):
    """Unknown is a stream for coalescing only: is_streaming stays false, so the answer keeps
    its write-stall and body timeouts and takes no stream slot."""
    assert not is_streaming(target(raw))
    assert not is_known_finite(target(raw))
