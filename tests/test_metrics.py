"""Prometheus metrics (--metrics): the registry alone (no sockets), the metrics listener alone
(a hand-driven Loop), then the real proxy in front of the suite's private dockerd, scraped with
the one raw HTTP client, and finally by a real Prometheus (Debian's), whose query API must
report the counts porthole kept.

Exposition-format validity is checked by Prometheus' own linter, `promtool check metrics`."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fake_upstream as fu  # noqa: E402
import proxy  # noqa: E402
import support  # noqa: E402

pytestmark = pytest.mark.timeout(120)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_exposition(text: str) -> dict:
    """{(name, frozenset of (label, value)): value} from exposition text (values unescaped)."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, "not a sample line: %r" % line
        name, labels, value = match.groups()
        pairs = []
        if labels:
            inner = labels[1:-1]
            pos = 0
            while pos < len(inner):
                label = _LABEL.match(inner, pos)
                assert label, "bad labels in %r" % line
                raw = label.group(2)
                pairs.append((label.group(1), re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)))
                pos = label.end()
        samples[(name, frozenset(pairs))] = float(value)
    return samples


def sample(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def promtool_problems(text: str) -> str:
    """What `promtool check metrics` says about the text ("" when it is clean)."""
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return "" if r.returncode == 0 else (r.stdout + r.stderr)


# ---------------------------------------------------------------------------------------------
# the registry alone


def test_fresh_registry_renders_every_family_and_the_fixed_label_sets_at_zero():
    samples = parse_exposition(proxy.Metrics("9.9.9").render(open_connections=0, open_streams=0))
    for reason in ("connect_failed", "timeout", "protocol_error", "closed"):
        assert sample(samples, "porthole_upstream_errors_total", reason=reason) == 0
    assert sample(samples, "porthole_reloads_total", result="ok") == 0
    assert sample(samples, "porthole_reloads_total", result="failed") == 0
    assert sample(samples, "porthole_info", version="9.9.9") == 1
    assert sample(samples, "porthole_open_connections") == 0
    assert sample(samples, "porthole_request_duration_seconds_count") == 0


def test_requests_are_counted_by_profile_decision_and_template():
    m = proxy.Metrics()
    for _ in range(3):
        m.request_done("default", "allow", "/containers/{id}/json", 0.002)
    m.request_done("traefik", "deny", None, 0.0001)
    m.request_done("default", "error", "/events", None)
    samples = parse_exposition(m.render(5, 1))
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow",
                  endpoint="/containers/{id}/json") == 3
    assert sample(samples, "porthole_requests_total", profile="traefik", decision="deny", endpoint="(none)") == 1
    assert sample(samples, "porthole_requests_total", profile="default", decision="error", endpoint="/events") == 1
    assert sample(samples, "porthole_open_connections") == 5
    assert sample(samples, "porthole_open_streams") == 1


def test_histogram_is_cumulative_and_leaves_streams_out():
    m = proxy.Metrics()
    for duration in (0.0005, 0.003, 0.003, 0.2, 100.0):
        m.request_done("default", "allow", "/info", duration)
    m.request_done("default", "allow", "/events", None)  # a stream: counted, not timed
    samples = parse_exposition(m.render(0, 0))
    bucket = lambda le: sample(samples, "porthole_request_duration_seconds_bucket", le=le)  # noqa: E731
    assert bucket("0.001") == 1
    assert bucket("0.005") == 3
    assert bucket("0.25") == 4
    assert bucket("30.0") == 4
    assert bucket("+Inf") == 5
    assert sample(samples, "porthole_request_duration_seconds_count") == 5
    assert sample(samples, "porthole_request_duration_seconds_sum") == pytest.approx(100.2065)
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow", endpoint="/events") == 1
    bounds = [float(le) for (name, labels), _ in samples.items() if name.endswith("_bucket")
              for key, le in labels if le != "+Inf"]
    counts = [bucket(le) for le in sorted({le for (name, labels) in samples if name.endswith("_bucket")
                                           for _, le in labels}, key=lambda v: float(v.replace("+Inf", "inf")))]
    assert counts == sorted(counts), "buckets are cumulative"
    assert len(bounds) == len(proxy.DURATION_BUCKETS)


def test_label_values_are_escaped():
    assert proxy.escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    m = proxy.Metrics('1.0 "odd\\version"\n')
    m.request_done("default", "allow", '/x/{name*}/"q"', 0.01)
    text = m.render(0, 0)
    samples = parse_exposition(text)
    assert sample(samples, "porthole_info", version='1.0 "odd\\version"\n') == 1
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow", endpoint='/x/{name*}/"q"') == 1
    assert promtool_problems(text) == ""


def test_promtool_accepts_a_busy_registry():
    m = proxy.Metrics()
    m.request_done("default", "allow", "/containers/{id}/json", 0.01)
    m.request_done("default", "deny", None, 0.0)
    m.upstream_error("timeout")
    m.reloaded(ok=False)
    text = m.render(2, 0)
    assert promtool_problems(text) == ""
    samples = parse_exposition(text)
    assert sample(samples, "porthole_upstream_errors_total", reason="timeout") == 1
    assert sample(samples, "porthole_reloads_total", result="failed") == 1


def test_an_unknown_upstream_error_reason_is_a_bug():
    with pytest.raises(ValueError):
        proxy.Metrics().upstream_error("something the daemon said")


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:9100?profile=default",
                                 "tcp://127.0.0.1:9100?tlscert=/c.pem&tlskey=/k.pem",
                                 "http://127.0.0.1:9100", "tcp://127.0.0.1"])
def test_bad_metrics_urls_are_usage_errors(url):
    with pytest.raises(proxy.UsageError):
        proxy.parse_settings(["--metrics", url], {})


def test_metrics_url_from_command_line_or_environment():
    s = proxy.parse_settings([], {"PORTHOLE_METRICS": "unix:///run/p/metrics.sock?mode=0666"})
    assert (s.metrics.kind, s.metrics.path, s.metrics.mode) == ("unix", "/run/p/metrics.sock", 0o666)
    s = proxy.parse_settings(["--metrics", "tcp://[::1]:9100"], {"PORTHOLE_METRICS": "unix:///x.sock"})
    assert (s.metrics.host, s.metrics.port) == ("::1", 9100)
    assert proxy.parse_settings([], {}).metrics is None


# ---------------------------------------------------------------------------------------------
# the metrics listener alone: a hand-driven Loop, a real unix listening socket


def _drive_until(loop, sock, done, passes=200):
    got = bytearray()
    for _ in range(passes):
        loop.run_once(0)
        try:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
        except BlockingIOError:
            pass
        if done(bytes(got)):
            break
    return bytes(got)


def test_metrics_server_answers_get_head_404_405_and_caps_its_connections(tmp_path):
    directory = tempfile.mkdtemp(prefix="ph-m-", dir="/tmp")
    try:
        path = directory + "/m.sock"
        settings = proxy.parse_settings(["--metrics", "unix://" + path], {})
        log = proxy.Log("json", "debug", open(os.devnull, "w"))
        loop = proxy.Loop(log)
        sock, identity = proxy.bind(settings.metrics)
        server = proxy.MetricsServer(sock, settings.metrics, loop, settings, log,
                                     lambda: "porthole_open_connections 7\n", identity)
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(path)
        conn.setblocking(False)
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nHEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _drive_until(loop, conn, lambda got: got.count(b"HTTP/1.1 ") == 3 and got.endswith(b"}"))
        responses = fu.HttpClient(None, received=raw)
        first = responses.read_response("GET")
        assert first.status == 200 and first.body == b"porthole_open_connections 7\n"
        assert first.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
        head = responses.read_response("HEAD")
        assert head.status == 200 and head.body == b"" and head.header("content-length") == "28"
        missing = responses.read_response("GET")
        assert missing.status == 404 and missing.json()["message"].startswith("porthole: ")
        conn.sendall(b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = _drive_until(loop, conn, lambda got: got.endswith(b"}"))
        refused = fu.HttpClient(None, received=raw).read_response("DELETE")
        assert refused.status == 405 and refused.header("allow") == "GET, HEAD"
        conn.close()

        # Rule 1: at most MAX_METRICS_CONNECTIONS at once; the listener pauses, then resumes
        held = []
        for _ in range(proxy.MAX_METRICS_CONNECTIONS + 2):
            c = socket.socket(socket.AF_UNIX)
            c.connect(path)  # the kernel's backlog takes them; the loop accepts what it may
            held.append(c)
        for _ in range(5):
            loop.run_once(0)
        assert len(server.clients) == proxy.MAX_METRICS_CONNECTIONS and server.listener.paused
        before = set(server.clients)
        held.pop(0).close()

        def slot_reused() -> bool:
            loop.run_once(0)
            return len(server.clients) == proxy.MAX_METRICS_CONNECTIONS and server.clients != before

        assert support.wait_until(slot_reused, 5), "a closed scraper's slot is given to a waiting one"
        assert server.listener.paused
        for c in held:
            c.close()
        server.close()
        for _ in range(5):
            loop.run_once(0)
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the real proxy in front of the private dockerd


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
    assert sample(samples, "porthole_info", version=proxy.VERSION) == 1
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
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(proxy.MAX_METRICS_CONNECTIONS + 3)]
    try:
        for _ in range(3):
            assert fu.get(p.addr, "/_ping").status == 200
    finally:
        for c in held:
            c.close()
    assert support.wait_until(lambda: support.can_connect(("127.0.0.1", port)) and
                              fu.get(("127.0.0.1", port), "/metrics").status == 200, 10)


# ---------------------------------------------------------------------------------------------
# a real Prometheus scraping --metrics


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1h
scrape_configs:
  - job_name: porthole
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
"""


def prometheus_query(port: int, query: str) -> list:
    from urllib.parse import quote
    r = fu.get(("127.0.0.1", port), "/api/v1/query?query=" + quote(query, safe=""), timeout=5)
    if r.status != 200:
        return []
    return r.json()["data"]["result"]


@pytest.mark.docker
def test_real_prometheus_scrapes_porthole(proxy_factory, tmp_path):
    metrics_port, prometheus_port = support.free_port(), support.free_port()
    p = proxy_factory(args=["--metrics", "tcp://127.0.0.1:%d" % metrics_port])
    addr = p.first_listener_address()
    for _ in range(3):
        assert fu.get(addr, "/_ping").status == 200
    assert fu.get(addr, "/v1.41/images/json").status == 200
    assert fu.get(addr, "/build", method="POST").status == 403
    work = tmp_path / ("prom-" + uuid.uuid4().hex[:6])
    work.mkdir()
    (work / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(metrics_port=metrics_port))
    log = open(work / "log", "wb")
    prom = subprocess.Popen(
        [PROMETHEUS, "--config.file", str(work / "prometheus.yml"),
         "--web.listen-address", "127.0.0.1:%d" % prometheus_port,
         "--storage.tsdb.path", str(work / "data"), "--storage.tsdb.retention.time", "1h"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    log.close()
    results = {}
    try:
        def scraped() -> bool:
            assert prom.poll() is None, "prometheus exited:\n" + (work / "log").read_text()[-3000:]
            try:
                found = prometheus_query(prometheus_port, "porthole_requests_total")
            except (OSError, fu.ConnectionClosed, ValueError):
                return False
            results.clear()
            for series in found:
                m = series["metric"]
                results[(m["profile"], m["decision"], m["endpoint"])] = float(series["value"][1])
            return results.get(("default", "allow", "/_ping")) == 3

        assert support.wait_until(scraped, 60, interval=0.5), "Prometheus saw %r; log:\n%s" % (
            results, (work / "log").read_text()[-3000:])
        assert results[("default", "allow", "/images/json")] == 1
        assert results[("default", "deny", "(none)")] == 1
        up = prometheus_query(prometheus_port, 'up{job="porthole"}')
        assert up and up[0]["value"][1] == "1"
        info = prometheus_query(prometheus_port, "porthole_info")
        assert info and info[0]["metric"]["version"] == proxy.VERSION
        health = prometheus_query(prometheus_port, "sum(porthole_upstream_errors_total)")
        assert health and health[0]["value"][1] == "0"
    finally:
        support.kill_group(prom)
        print("---- prometheus log tail ----\n" + (work / "log").read_text()[-3000:])


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
