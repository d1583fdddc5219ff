"""Replay the fuzzing corpus (fuzz/corpus/) through the fuzz targets' invariant checks.

No atheris needed: fuzz/fuzz_canonical.py and fuzz/fuzz_request.py import atheris only when
run as the fuzzing program. The last tests break the proxy on purpose (monkeypatch) to show
that the checks do catch what they claim to.
"""
from __future__ import annotations

import sys
from pathlib import Path

import h11
import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_canonical  # noqa: E402
import fuzz_common  # noqa: E402
import fuzz_request  # noqa: E402
from fuzz_common import InvariantViolation  # noqa: E402
import porthole.app.dispatch  # noqa: E402
import porthole.core.decide  # noqa: E402
from porthole.connections.client import ClientConnection  # noqa: E402
from porthole.core.decide import FORWARDED_REQUEST_HEADERS, RequestFacts, decide, forwarded_request  # noqa: E402
from porthole.core.guards import parse_template  # noqa: E402
from porthole.core.policy import Policy, Rule  # noqa: E402
from porthole.core.target import Target  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def corpus(target: str) -> list[Path]:
    files = sorted(p for p in (FUZZ / "corpus" / target).iterdir() if p.is_file())
    assert len(files) >= 20, f"fuzz/corpus/{target} lost its seeds ({len(files)} files)"
    return files


def test_atheris_is_not_needed():
    assert "atheris" not in sys.modules


@pytest.mark.parametrize("path", corpus("canonical"), ids=lambda p: p.name)
def test_canonical_corpus(path):
    fuzz_canonical.check(path.read_bytes())


@pytest.mark.parametrize("path", corpus("request"), ids=lambda p: p.name)
def test_request_corpus(path):
    data = path.read_bytes()
    for delivery in fuzz_request.DELIVERIES:  # the fuzzer picks one by length; replay all
        fuzz_request.check(data, delivery)


def test_corpus_is_small():
    files = [p for p in (FUZZ / "corpus").rglob("*") if p.is_file()]
    assert len(files) < 200 and sum(p.stat().st_size for p in files) < 1024 * 1024


def test_request_reference_sees_what_the_seeds_mean():
    """The differential reference itself: pipelined allowed/denied requests, in order."""
    data = (FUZZ / "corpus" / "request" / "seed-pipelined-mixed").read_bytes()
    assert fuzz_request.reference(data) == [("GET", 200, b"/_ping"), ("GET", 403, None), ("HEAD", 200, b"/_ping")]
    data = (FUZZ / "corpus" / "request" / "seed-cl-and-te").read_bytes()
    assert [status for _, status, _ in fuzz_request.reference(data)] == [403]  # a body: refused, closed


# ---- the checks can fail ----------------------------------------------------------------------

PING = b"GET /v1.41/_ping HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\nX-Secret: s\r\n\r\n"


def test_checks_catch_a_post_being_forwarded(monkeypatch):
    real = decide

    def lax(policy, facts, allow_hosts=frozenset()):
        if facts.method == "POST":
            facts = RequestFacts("GET", facts.target, facts.headers, facts.listener_kind, facts.profile)
            decision = real(policy, facts, allow_hosts)
            return decision
        return real(policy, facts, allow_hosts)

    monkeypatch.setattr(fuzz_common.proxy, "decide", lax)  # where fuzz_canonical looks it up
    with pytest.raises(InvariantViolation, match="other than GET/HEAD"):
        fuzz_canonical.check(b"/_ping")


def test_checks_catch_a_non_round_tripping_forward_form(monkeypatch):
    monkeypatch.setattr(Target, "forward_form", lambda self: "/" + "/".join(self.segments) + "/")
    with pytest.raises(InvariantViolation, match="unexpected characters|refused|round-trip"):
        fuzz_canonical.check(b"/v1.41/containers/json")


def test_checks_catch_a_dangerous_read_without_acknowledgement(monkeypatch):
    monkeypatch.setattr(porthole.core.decide, "dangerous_reason", lambda segments, redact=frozenset(): None)  # where decide looks it up
    rules = [r for r in fuzz_common.POLICY.profiles["default"]]
    wide = Rule("default", 99, frozenset({"GET"}), "/containers/{id}/{what}",
                      parse_template("/containers/{id}/{what}"), None, False)
    policy = Policy("test", {**fuzz_common.POLICY.profiles, "default": (*rules, wide)})
    monkeypatch.setattr(fuzz_common, "POLICY", policy)
    with pytest.raises(InvariantViolation, match="dangerous read"):
        fuzz_canonical.check(b"/containers/web/export")


def test_checks_catch_a_header_leaking_upstream(monkeypatch):
    names = FORWARDED_REQUEST_HEADERS
    secret = b"x-secret" if isinstance(names[0], bytes) else "x-secret"
    monkeypatch.setattr(porthole.core.decide, "FORWARDED_REQUEST_HEADERS", (*names, secret))
    with pytest.raises(InvariantViolation, match="outside Host/User-Agent/Accept"):
        fuzz_request.check(PING)


def test_checks_catch_a_raw_target_forwarded(monkeypatch):
    real = forwarded_request

    def raw_target(method, target, headers):
        request = real(method, target, headers)
        return h11.Request(method=method, target=b"/v1.41/%5fping", headers=request.headers)

    monkeypatch.setattr(porthole.app.dispatch, "forwarded_request", raw_target)  # where Dispatch calls it
    with pytest.raises(InvariantViolation, match="not in canonical form"):
        fuzz_request.check(PING)


def test_checks_catch_dropped_pipelined_requests(monkeypatch):
    real = ClientConnection.finish_exchange

    def hangs_up(self):
        self.exchange.close_after = True  # drops what the client pipelined
        real(self)

    monkeypatch.setattr(ClientConnection, "finish_exchange", hangs_up)
    data = (FUZZ / "corpus" / "request" / "seed-pipelined-mixed").read_bytes()
    with pytest.raises(InvariantViolation, match="differ from the reference"):
        fuzz_request.check(data)
