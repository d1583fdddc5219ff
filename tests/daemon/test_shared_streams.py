"""Identical /events watchers share one upstream subscription (fake upstream)."""
import time

import pytest

import fake_upstream as fu
from fake_upstream import ConnectionClosed, HttpClient, events_requests
from policies import FANOUT_RULES
from support import assert_served

RULES = FANOUT_RULES


@pytest.fixture
def proxy(start_proxy):
    return start_proxy("--max-streams-per-client", "100")


def watch(addr, target="/v1.41/events"):
    c = HttpClient(addr, timeout=5)
    c.request("GET", target)
    r = c.read_head()
    assert r.status == 200 and (r.header("transfer-encoding") or "").lower() == "chunked"
    return c, r


def test_watchers_of_one_target_share_one_subscription(proxy, upstream):
    upstream.route("/events", fu.events(interval=0.05))
    watchers = [watch(proxy.addr) for _ in range(5)]
    try:
        for c, r in watchers:  # every watcher gets the events, in order
            first = c.read_chunk(r, timeout=5)
            second = c.read_chunk(r, timeout=5)
            assert first.startswith(b'{"status":"start"') and second.startswith(b'{"status":"start"')
            assert int(second.split(b'"id":"c')[1][:6]) == int(first.split(b'"id":"c')[1][:6]) + 1
        assert len(events_requests(upstream)) == 1
        assert upstream.connections_accepted == 1
        # a watcher leaving does not disturb the others
        watchers[0][0].close()
        for c, r in watchers[1:]:
            assert c.read_chunk(r, timeout=5) is not None
        # since/until and other filters get their own subscriptions
        c_since, r_since = watch(proxy.addr, "/v1.41/events?since=1700000000")
        c_filter, r_filter = watch(proxy.addr, "/v1.41/events?filters=%7B%7D")
        assert c_since.read_chunk(r_since, timeout=5) and c_filter.read_chunk(r_filter, timeout=5)
        assert len(events_requests(upstream)) == 3
        c_since.close()
        c_filter.close()
    finally:
        for c, _ in watchers:
            c.close()
    # the last watcher gone: the subscription is closed upstream
    conn = upstream.connections[0]
    assert conn.send_failed.wait(5) or conn.peer_eof.wait(5), "shared subscription still open"
    assert_served(proxy)


def test_a_late_watcher_gets_the_head_and_only_new_events(proxy, upstream):
    upstream.route("/events", fu.events(interval=0.1))
    c1, r1 = watch(proxy.addr)
    try:
        early = [c1.read_chunk(r1, timeout=5) for _ in range(3)]
        c2, r2 = watch(proxy.addr)  # joins after three events: same head, no replay
        try:
            late = c2.read_chunk(r2, timeout=5)
            ids = lambda chunk: int(chunk.split(b'"id":"c')[1][:6])
            assert ids(late) > ids(early[-1])
            assert r2.header("content-type") == r1.header("content-type")
            assert len(events_requests(upstream)) == 1
        finally:
            c2.close()
    finally:
        c1.close()


def test_a_slow_watcher_among_several_is_cut_off_not_the_others(proxy, upstream):
    """The slow watcher is disconnected once it falls behind; the fast one never stops
    receiving. No throughput figure: how much must flow first depends on kernel buffers."""
    upstream.route("/events", fu.events(interval=0, payload=b"x" * 60000))
    slow = fu.connect(proxy.addr)
    slow.setsockopt(fu.socket.SOL_SOCKET, fu.socket.SO_RCVBUF, 4096)
    slow.sendall(fu.build_request("GET", "/v1.41/events", [("Host", "localhost")]))
    fast, r = watch(proxy.addr)
    try:
        cut = lambda l: l.get("reason") == "too slow for a shared event stream"  # noqa: E731
        deadline = time.monotonic() + 60
        while not proxy.wait_for_log(cut, 0) and time.monotonic() < deadline:
            assert fast.read_chunk(r, timeout=30), "the fast watcher's stream ended"
        assert proxy.wait_for_log(cut, 0), "the slow watcher was never cut off"
        for _ in range(20):  # and the fast one goes on receiving
            assert fast.read_chunk(r, timeout=30)
        # the slow one was disconnected: reset, or EOF once its buffers drain; never a hang
        slow.settimeout(10)
        try:
            while slow.recv(1 << 20):
                pass
        except TimeoutError:
            pytest.fail("the slow watcher is still connected")
        except (ConnectionResetError, OSError):
            pass
    finally:
        slow.close()
        fast.close()


def test_upstream_death_aborts_every_watcher(proxy, upstream):
    upstream.route("/events", fu.die_mid_chunk(good_events=1, delay=0.5))
    watchers = [watch(proxy.addr) for _ in range(3)]
    for c, r in watchers:
        assert c.read_chunk(r, timeout=5) is not None
    for i, (c, r) in enumerate(watchers):  # no clean last chunk: the stream is aborted
        try:
            while c.read_chunk(r, timeout=5) is not None:
                pass
        except TimeoutError:  # socket.timeout; an OSError too, but no abort: the watcher hangs
            pytest.fail("watcher %d still connected 5 s after the daemon died" % i)
        except (ConnectionClosed, OSError):
            pass  # aborted: EOF or reset before the stream's end
        else:
            pytest.fail("watcher %d got a clean last chunk after the daemon died" % i)
        assert not r.complete
        c.close()
    assert_served(proxy)
