"""porthole/runtime/listen_url.py: the quick reading of listener URLs that --healthcheck uses
reads what parse_endpoint reads, the same way, or answers None (its Rule 1), also for generated
URLs; and it reads the URLs people write, so that the probe stays lean for them."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from porthole.runtime import config
from porthole.runtime.config import UsageError, parse_endpoint
from porthole.runtime.listen_url import DEFAULT_LISTEN, quick_listener

FIELDS = ("kind", "host", "port", "path", "tlscert", "tlskey", "tlscacert", "tls")


def same_as_parse_endpoint(url: str) -> None:
    """Rule 1: an answer means parse_endpoint reads the URL without an error, the same way."""
    quick = quick_listener(url)
    if quick is None:
        return
    endpoint = parse_endpoint(url, listener=True)
    assert quick.url == endpoint.url
    assert {f: getattr(quick, f) for f in FIELDS} == {f: getattr(endpoint, f) for f in FIELDS}, url


@pytest.mark.parametrize("url", [
    DEFAULT_LISTEN, "tcp://0.0.0.0:2375", "tcp://[::]:2375", "tcp://[::1]:2375/", "tcp://porthole:2375",
    "tcp://docker-proxy.internal:0", "tcp://127.0.0.1:2375?profile=traefik",
    "tcp://127.0.0.1:2376?tlscert=/certs/server.pem&tlskey=/certs/server-key.pem&tlscacert=/certs/ca.pem",
    "tcp://0.0.0.0:2376?tlscert=/c.pem&tlskey=/k.pem", "unix:///run/porthole/docker.sock",
    "unix:///run/porthole/docker.sock?mode=0666&profile=traefik", "unix:///run/porthole/docker.sock?mode=0660&gid=999",
    "unix:///",
])
def test_the_urls_people_write_are_read_quickly_and_the_same(url):
    assert quick_listener(url) is not None
    same_as_parse_endpoint(url)


@pytest.mark.parametrize("url", [
    # what parse_endpoint refuses
    "http://127.0.0.1:1", "tcp://127.0.0.1", "tcp://:80", "tcp://127.0.0.1:1/path", "unix://relative.sock",
    "unix:///a.sock?mode=999", "unix:///a.sock?mode=abc", "unix:///a.sock?owner=1", "tcp://127.0.0.1:1?mode=0600",
    "tcp://127.0.0.1:99999", "tcp://[1.2.3.4]:1", "tcp://[zz]:1", "tcp://[::1]x:1", "tcp://u@h:1",
    "tcp://h:1?tlscert=/c.pem", "tcp://h:1?tlscert=&tlskey=/k", "unix:///a.sock#x", "unix:///a.sock?gid=",
    # what it reads, but in a way this reading leaves to it
    "TCP://h:1", "tcp://Host:1", "unix:///a%20b.sock", "tcp://h:1?profile=a+b", "tcp://h:1?profile=a%2Fb",
    "unix:///a.sock?profile", "unix:///a.sock?profile=a&profile=b", "unix:///a.sock?mode=1&&gid=2", " tcp://h:1",
    "unix:///a b.sock", "tcp://h:000001", "tcp://[fe80::1%25eth0]:1", "unix:///é.sock",
])
def test_anything_else_is_left_to_parse_endpoint(url):
    assert quick_listener(url) is None


def test_the_default_listener_is_defined_once():
    assert config.DEFAULT_LISTEN is DEFAULT_LISTEN


PIECES = {
    "scheme": st.sampled_from(["tcp://", "unix://", "TCP://", "Unix://", "http://", "", "tcp:/", "unix:"]),
    "host": st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "LocalHost", "a-b.c", "h_x", "[::1]", "[::]",
                             "[1.2.3.4]", "[::ffff:1.2.3.4]", "[fe80::1%25eth0]", "[zz]", "[::1", "::1]", "[]", "",
                             "u@h", "u:p@h", "[::1]x", "1.2.3.4.5", "é"]),
    "port": st.sampled_from(["", ":", ":0", ":2375", ":65535", ":65536", ":99999", ":+1", ":-1", ": 1", ":00080",
                             ":1:2", ":\u0663", ":1e3"]),
    "path": st.sampled_from(["", "/", "//", "/x", "/run/p.sock", "/a b", "/a%20b", "/a?b", "/é", "/a#b", "x"]),
    "field": st.sampled_from(["mode=0666", "mode=0777", "mode=0", "mode=1000", "mode=999", "mode=", "mode=-1",
                              "gid=12", "gid=0012", "gid=x", "gid=", "profile=traefik", "profile=", "profile",
                              "profile=a+b", "profile=a%2Fb", "profile=a=b", "profile=a;b", "tlscert=/c.pem",
                              "tlskey=/k.pem", "tlscacert=/ca.pem", "tlscert=", "x=1", "", "owner=1"]),
}


@st.composite
def urls(draw):
    fields = draw(st.lists(PIECES["field"], max_size=4))
    query = draw(st.sampled_from(["", "?"])) + "&".join(fields) if fields else draw(st.sampled_from(["", "?"]))
    return (draw(PIECES["scheme"]) + draw(PIECES["host"]) + draw(PIECES["port"]) + draw(PIECES["path"]) + query
            + draw(st.sampled_from(["", "#f", "#"])))


@settings(max_examples=3000, deadline=None)
@given(urls())
def test_generated_urls_are_read_as_parse_endpoint_reads_them(url):
    same_as_parse_endpoint(url)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7f), max_size=40).map(
    lambda text: "unix:///" + text) | st.text(max_size=40).map(lambda text: "tcp://" + text))
def test_arbitrary_urls_are_read_as_parse_endpoint_reads_them(url):
    same_as_parse_endpoint(url)


def test_generated_urls_do_reach_both_readings():
    """(The strategy is not vacuous: it makes URLs both read, and URLs parse_endpoint refuses.)"""
    read = ["tcp://127.0.0.1:2375?profile=traefik", "unix:///run/p.sock?mode=0666&gid=12"]
    refused = ["tcp://127.0.0.1:65536", "unix:///a.sock?mode=1000"]
    assert all(quick_listener(url) is not None for url in read)
    for url in refused:
        assert quick_listener(url) is None
        with pytest.raises(UsageError):
            parse_endpoint(url, listener=True)
