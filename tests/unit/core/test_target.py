"""porthole/core/target.py: canonicalisation of request targets, examples and properties."""
import string

import pytest
from hypothesis import assume, given, settings, strategies as st

from porthole.core.target import Refusal, Target, canonicalize_target


def canon(raw: str) -> Target:
    return canonicalize_target(raw.encode("latin-1"))


@pytest.mark.parametrize("raw, version, segments, query", [
    ("/_ping", None, ("_ping",), ()),
    ("/v1.41/containers/json?all=1", "1.41", ("containers", "json"), (("all", "1"),)),
    ("/v1.9/info", "1.9", ("info",), ()),
    ("/%63ontainers/json", None, ("containers", "json"), ()),
    ("/images/registry.local:5000/team/app:1.2/json", None,
     ("images", "registry.local:5000", "team", "app:1.2", "json"), ()),
    ("/images/sha256:abc/json", None, ("images", "sha256:abc", "json"), ()),
    ("/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D", None, ("events",),
     (("filters", '{"type":["container"]}'),)),
    ("/containers/json?filters=%7B%22name%22%3A%5B%22a%2Fb%22%5D%7D", None, ("containers", "json"),
     (("filters", '{"name":["a/b"]}'),)),
    ("/x?all", None, ("x",), (("all", ""),)),
    ("/x?a=1+2", None, ("x",), (("a", "1 2"),)),
    ("/x?", None, ("x",), ()),
])
def test_accepted_targets(raw, version, segments, query):
    target = canon(raw)
    assert (target.version, target.segments, target.query) == (version, segments, query)


@pytest.mark.parametrize("raw", [
    "*", "http://docker/containers/json", "docker/containers/json", "",
    "/", "//containers/json", "/containers//json", "/containers/json/", "/./containers/json",
    "/containers/../images/json", "/%2e%2e/containers/json", "/containers/%2e/json",
    "/containers/a%2Fb/json", "/containers/a%2fb/json", "/containers/a%5Cb/json",
    "/containers/x;param/json", "/containers/json#frag", "/containers/json?a=1#f",
    "/containers/%00/json", "/containers/%C0%AF/json", "/containers/%zz/json", "/containers/%4/json",
    "/containers/%/json", "/containers/caf\u00e9/json", "/containers/a b/json",
    "/v1.041/info", "/v1.41.0/info", "/V1.41/info", "/v1/info", "/v01.41/info", "/v1.41",
    "/v1.41/", "/x?a=1&a=2", "/x?a=1&&b=2", "/x?=1", "/x?a%00=1", "/x?a=%00", "/x?a=%ff",
    "/x?a=%zz", "/x?;a=1", "/x?a\\b=1", "/containers/-rf/json", "/containers/.hidden/json",
    "/containers/a%20b/json", "/containers/%61%2F%62/json",
])
def test_refused_targets(raw):
    with pytest.raises(Refusal) as info:
        canon(raw)
    assert info.value.status == 400 and info.value.reason


def test_non_ascii_bytes_refused():
    with pytest.raises(Refusal):
        canonicalize_target(b"/containers/\xc3\xa9/json")
    with pytest.raises(Refusal):
        canonicalize_target(b"/containers/json?x=\xff")


def test_forward_form_rebuilds_from_decoded_parts():
    target = canon("/v1.41/%63ontainers/json?filters=%7B%22a%22%3A1%7D&all=1")
    assert target.forward_form() == "/v1.41/containers/json?filters=%7B%22a%22%3A1%7D&all=1"
    assert canon("/x?a=1+2").forward_form() == "/x?a=1%202"
    assert canon("/x?all").forward_form() == "/x?all="


# ---- properties ---------------------------------------------------------------------------

SAFE_FIRST = string.ascii_letters + string.digits + "_"
SAFE_REST = SAFE_FIRST + ".:@-"
segment = st.builds(lambda a, b: a + b, st.sampled_from(SAFE_FIRST), st.text(SAFE_REST, max_size=12))
query_key = st.builds(lambda a, b: a + b, st.sampled_from(SAFE_FIRST), st.text(SAFE_FIRST + ".-", max_size=8))
query_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=20)
targets = st.builds(
    Target,
    st.one_of(st.none(), st.builds(lambda a, b: f"{a}.{b}", st.integers(0, 99), st.integers(0, 99))),
    st.lists(segment, min_size=1, max_size=6).filter(lambda s: not (s[0][:1] in "vV" and s[0][1:2].isdigit())).map(tuple),
    st.lists(st.tuples(query_key, query_value), max_size=4, unique_by=lambda kv: kv[0]).map(tuple),
)


@given(targets)
def test_forward_form_round_trips(target):
    """What we forward parses back to exactly what we matched: match == forward."""
    assert canon(target.forward_form()) == target


@given(targets)
def test_canonical_form_is_a_fixed_point(target):
    once = canon(target.forward_form()).forward_form()
    assert canon(once).forward_form() == once


def encode_some(text: str, mask: list[bool]) -> str:
    return "".join(f"%{ord(c):02X}" if m else c for c, m in zip(text, mask))


@given(st.lists(segment, min_size=1, max_size=5), st.data())
def test_percent_encoding_a_path_never_changes_its_meaning(segments, data):
    """'%65xport' is 'export': any mix of encoded characters decodes to the same target."""
    assume(not (segments[0][:1] in "vV" and segments[0][1:2].isdigit()))
    plain = "/" + "/".join(segments)
    mask = data.draw(st.lists(st.booleans(), min_size=len(plain), max_size=len(plain)))
    encoded = "".join("/" if c == "/" else encode_some(c, [m]) for c, m in zip(plain, mask))
    assert canon(encoded).segments == tuple(segments)


@settings(max_examples=500)
@given(st.binary(max_size=60))
def test_arbitrary_bytes_either_refused_or_canonical(raw):
    """Never a crash; whatever is accepted has only safe segments and round-trips."""
    try:
        target = canonicalize_target(b"/" + raw)
    except Refusal as refusal:
        assert refusal.status == 400
        return
    for seg in target.segments:
        assert seg not in ("", ".", "..") and "/" not in seg and "%" not in seg
    assert canon(target.forward_form()) == target


@settings(max_examples=300)
@given(st.text(alphabet="/%2eEfF.acdeijlnoprstvwxz0134?&=;#", max_size=40))
def test_slash_and_dot_tricks_never_yield_dot_segments(raw):
    try:
        target = canon("/" + raw)
    except Refusal:
        return
    assert all(seg not in (".", "..") and "/" not in seg for seg in target.segments)


@pytest.mark.parametrize("raw", ["/v./debug/pprof", "/v1./info", "/v.1/info", "/v1.2.3/info", "/V1.41/info", "/v99999.1/info"])
def test_version_like_first_segments_are_versions_or_refused(raw):
    """The daemon routes /v{version:[0-9.]+}/...: such a segment is never an ordinary path segment."""
    with pytest.raises(Refusal):
        canon(raw)


# ---- Podman's three-part API versions ---------------------------------------------------------

def test_three_part_versions_only_before_libpod():
    target = canonicalize_target(b"/v4.3.1/libpod/_ping")
    assert (target.version, target.path, target.forward_form()) == ("4.3.1", "/libpod/_ping", "/v4.3.1/libpod/_ping")
    for raw in (b"/v4.3.1/containers/json", b"/v4.3.1", b"/v4.03.1/libpod/_ping", b"/v4.3.1.0/libpod/_ping",
                b"/v4.3./libpod/_ping"):
        with pytest.raises(Refusal):
            canonicalize_target(raw)
