"""Prometheus metrics (--metrics) of the running proxy: in front of the suite's private dockerd and
of the fake daemon, scraped with the one raw HTTP client and read back (tests/lib/exposition.py);
exposition-format validity by Prometheus' own linter, `promtool check metrics`. (The registry
alone: tests/unit/runtime/test_metrics.py; the listener alone: tests/unit/ops/test_metrics_server.py;
a real Prometheus: tests/consumers/test_consumer_prometheus.py.)"""

from __future__ import annotations

import os
import signal
import socket

import pytest

import fake_upstream as fu
import support
from exposition import parse_exposition, promtool_problems, sample
from porthole import VERSION
from porthole.ops.metrics_server import MAX_METRICS_CONNECTIONS

pytestmark = pytest.mark.timeout(120)


def scrape(address, method="GET") -> dict:
    r = fu.get(address, "/metrics", method=method, timeout=5)
    assert r.status == 200, (r.status, r.body)
    assert r.header("content-type").startswith("text/plain; version=0.0.4")
    return parse_exposition(r.body.decode())


@pytest.mark.docker
def test_black_box_counts_templates_not_raw_paths(proxy_factory, containers, busybox_image):
    container = containers(busybox_image)
    port = support.free_port()
    metrics = ("127.0.0.1", port)
    p = proxy_factory(args=["--metrics", "tcp://127.0.0.1:%d" % port])
    addr = p.first_listener_address()
    for _ in range(2):
        assert fu.get(addr, "/v1.41/containers/%s/json" % container.id).status == 200
    assert fu.get(addr, "/containers/json").status == 200
    assert fu.get(addr, "/containers/%s/logs?stdout=1" % container.id).status == 403  # dangerous
    assert fu.get(addr, "/v1.41/containers/create", method="POST").status == 403
    assert fu.get(addr, "/no/such/thing").status == 403
    with fu.HttpClient(addr) as watcher:  # an open stream
        watcher.request("GET", "/events")
        assert watcher.read_head().status == 200
        support.wait_until(lambda: sample(scrape(metrics), "porthole_open_streams") == 1, 5)
        samples = scrape(metrics)
        assert sample(samples, "porthole_open_streams") == 1
        assert sample(samples, "porthole_open_connections") >= 1
    text = fu.get(metrics, "/metrics").body.decode()
    assert container.id not in text and container.id[:12] not in text, "a raw path leaked into a label"
    assert promtool_problems(text) == ""
    samples = parse_exposition(text)
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow",
                  endpoint="/containers/{id}/json") == 2
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow",
                  endpoint="/containers/json") == 1
    assert sample(samples, "porthole_requests_total", profile="default", decision="deny", endpoint="(none)") == 3
    # a watcher that hangs up ends its stream as streams end: allowed (its request log line
    # says "ended": "client closed"), not an error
    support.wait_until(lambda: sample(scrape(metrics), "porthole_requests_total", profile="default",
                                      decision="allow", endpoint="/events") == 1, 5)
    samples = scrape(metrics)
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow", endpoint="/events") == 1
    assert sample(samples, "porthole_request_duration_seconds_count") == 6, "six finite requests; the stream is not timed"
    assert sample(samples, "porthole_open_streams") == 0
    assert sample(samples, "porthole_info", version=VERSION) == 1
    head = fu.get(metrics, "/metrics", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert fu.get(metrics, "/").status == 404
    assert fu.get(metrics, "/metrics", method="POST").status == 405
    # scrapes are not requests of the proxy: the count did not move
    assert sample(scrape(metrics), "porthole_request_duration_seconds_count") == 6


@pytest.mark.docker
def test_black_box_reloads_and_unix_metrics_listener(proxy_factory, tmp_path):
    url, path = support.unix_listen_url("metrics.sock", "mode=0666")
    p = proxy_factory(args=["--metrics", url])
    assert oct(os.stat(path).st_mode & 0o777) == "0o666"
    good = p.rules_path.read_text()
    p.rules_path.write_text("{ not json")
    p.send_signal(signal.SIGHUP)
    assert p.wait_for_log(lambda l: l.get("event") == "reload_failed")
    p.rules_path.write_text(good)
    p.send_signal(signal.SIGHUP)
    assert p.wait_for_log(lambda l: l.get("event") == "reload")
    samples = scrape(path)
    assert sample(samples, "porthole_reloads_total", result="failed") == 1
    assert sample(samples, "porthole_reloads_total", result="ok") == 1
    with fu.HttpClient(path) as idle_scraper:  # a keep-alive scraper does not hold up the exit
        idle_scraper.request("GET", "/metrics")
        assert idle_scraper.read_response().status == 200
        assert p.stop() == 0
    assert not os.path.exists(path), "the metrics socket file is removed on exit"


def test_black_box_upstream_errors_by_reason(start_proxy, upstream):
    port = support.free_port()
    metrics = ("127.0.0.1", port)
    p = start_proxy("--metrics", "tcp://127.0.0.1:%d" % port, "--response-timeout", "0.5")
    upstream.route("/info", fu.invalid_status_line())
    assert fu.get(p.addr, "/info").status == 502
    upstream.route("/version", fu.slow(delay=3))
    assert fu.get(p.addr, "/version", timeout=10).status == 504
    samples = scrape(metrics)
    assert sample(samples, "porthole_upstream_errors_total", reason="protocol_error") == 1
    assert sample(samples, "porthole_upstream_errors_total", reason="timeout") == 1
    assert sample(samples, "porthole_requests_total", profile="default", decision="error", endpoint="/info") == 1
    upstream.stop()  # the daemon is gone: connects fail
    assert fu.get(p.addr, "/_ping").status == 502
    assert sample(scrape(metrics), "porthole_upstream_errors_total", reason="connect_failed") == 1


RULES = {"version": 1, "profiles": {"default": {"rules": [
    {"method": ["GET", "HEAD"], "path": "/_ping"}, {"method": "GET", "path": "/info"},
    {"method": "GET", "path": "/version"}]}}}


def test_metrics_connections_do_not_take_the_proxys_slots(start_proxy):
    port = support.free_port()
    p = start_proxy("--metrics", "tcp://127.0.0.1:%d" % port, "--max-connections", "2")
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(MAX_METRICS_CONNECTIONS + 3)]
    try:
        for _ in range(3):
            assert fu.get(p.addr, "/_ping").status == 200
    finally:
        for c in held:
            c.close()
    assert support.wait_until(lambda: support.can_connect(("127.0.0.1", port)) and
                              fu.get(("127.0.0.1", port), "/metrics").status == 200, 10)


WARN_RULES = {"version": 1, "profiles": {"default": {"mode": "warn", "rules": [
    {"method": ["GET", "HEAD"], "path": "/_ping"}]}}}


def test_would_deny_paths_never_become_series(start_proxy, upstream):
    """Issue "(2 of 5)", item 5: in warn mode a stand-in rule carried the concrete path, and 200
    made-up paths gave 200 series. Now a would_deny is labelled with the template learn mode
    would learn it as, or (none)."""
    port = support.free_port()
    p = start_proxy("--metrics", "tcp://127.0.0.1:%d" % port, rules=support.write_rules(WARN_RULES))
    for i in range(60):
        fu.get(p.addr, "/containers/made-up-%d/json" % i)
        fu.get(p.addr, "/no-such-endpoint-%d" % i)
    samples = scrape(("127.0.0.1", port))
    endpoints = {labels["endpoint"] for (name, labels) in
                 ((name, dict(labels)) for name, labels in samples) if name == "porthole_requests_total"}
    assert endpoints == {"/containers/{id}/json", "(none)"}
    assert sample(samples, "porthole_requests_total", profile="default", decision="would_deny",
                  endpoint="/containers/{id}/json") == 60
