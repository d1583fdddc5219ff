"""Prometheus' `docker_sd` (Debian's `prometheus`) discovering the private daemon's containers
through porthole: first with the suite's recording profile (what does it send?), then with
the shipped `prometheus` preset (does it work, with nothing refused?).

Prometheus listens on 127.0.0.1 only; discovery refreshes every second; the discovered
targets are relabelled to Prometheus' own loopback address, so nothing but loopback is
ever scraped. Its targets API must list the suite's containers.

Then Prometheus' own tools on porthole's --metrics: `promtool check metrics` on what the registry
renders, and a real Prometheus scraping the running proxy, whose query API must report the counts
porthole kept."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

import consumers
import fake_upstream as fu
import support
from exposition import PROMETHEUS, parse_exposition, promtool_problems, sample
from porthole import VERSION
from porthole.runtime.metrics import Metrics, escape_label_value

pytestmark = pytest.mark.timeout(120)

LABEL = "porthole.test.prometheus"

CONFIG = """\
global:
  scrape_interval: 1h
  evaluation_interval: 1h
scrape_configs:
  - job_name: docker
    docker_sd_configs:
      - host: {host}
        refresh_interval: 1s
        filters:
          - name: label
            values: ["{label}={run}"]
    relabel_configs:
      - source_labels: [__meta_docker_container_name]
        target_label: container
      - target_label: __address__
        replacement: 127.0.0.1:{port}
"""


@pytest.fixture
def labelled_containers(containers, busybox_image):
    """Two running `--network none` containers labelled for this test run."""
    run = uuid.uuid4().hex[:8]
    made = [containers(busybox_image, name="ph-prom-%s-%d" % (run, i), labels={LABEL: run})
            for i in range(2)]
    return run, ["/" + c.name for c in made]


def discovered_containers(port: int) -> set:
    r = fu.get(("127.0.0.1", port), "/api/v1/targets?state=active", timeout=5)
    if r.status != 200:
        return set()
    targets = r.json()["data"]["activeTargets"]
    return {t["labels"].get("container") for t in targets if t.get("scrapePool") == "docker"}


def start_prometheus(config: str, port: int, tmp_path):
    """Debian's Prometheus with `config` (prometheus.yml), its web API on 127.0.0.1:port, its data
    and its log (`log`) in a fresh directory under tmp_path: (the process, that directory)."""
    work = tmp_path / ("prom-" + uuid.uuid4().hex[:6])
    work.mkdir()
    (work / "prometheus.yml").write_text(config)
    with open(work / "log", "wb") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, "--config.file", str(work / "prometheus.yml"), "--web.listen-address", "127.0.0.1:%d" % port,
             "--storage.tsdb.path", str(work / "data"), "--storage.tsdb.retention.time", "1h"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    return proc, work


def run_prometheus(docker_host: str, run: str, want: list, tmp_path) -> set:
    """Start Prometheus with docker_sd pointed at docker_host; wait (bounded) until its targets
    API lists every container in `want`; return what it listed."""
    port = support.free_port()
    proc, work = start_prometheus(CONFIG.format(host=docker_host, label=LABEL, run=run, port=port), port, tmp_path)
    found = set()
    try:
        def listed():
            nonlocal found
            if proc.poll() is not None:
                return True
            try:
                found = discovered_containers(port)
            except (OSError, fu.ConnectionClosed, ValueError):
                return False
            return set(want) <= found
        support.wait_until(listed, 40, interval=0.5)
        assert proc.poll() is None, "prometheus exited %s:\n%s" % (
            proc.returncode, (work / "log").read_text()[-3000:])
    finally:
        support.kill_group(proc)
    print("---- prometheus log tail ----\n" + (work / "log").read_text()[-3000:])
    return found


@pytest.mark.docker
def test_prometheus_docker_sd_record(proxy_factory, labelled_containers, tmp_path, record_property):
    run, names = labelled_containers
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    found = run_prometheus(docker_host, run, names, tmp_path)
    assert set(names) <= found, "targets API lists %s, want %s" % (sorted(found), names)
    calls = consumers.stop_and_record(proxy)
    consumers.report("prometheus docker_sd", calls, record_property)
    consumers.assert_all_allowed(proxy, "prometheus")
    consumers.assert_sent(calls, "GET", "/containers/json")
    assert any(c["path"] == "/containers/json" and c.get("filters") == "label:map" for c in calls), \
        "docker_sd sends the configured label filter (Go map form)"


@pytest.mark.docker
@pytest.mark.parametrize("listener", ["unix", "tcp"])
def test_prometheus_docker_sd_preset(listener, proxy_factory, labelled_containers, tmp_path):
    run, names = labelled_containers
    make = consumers.unix_listener if listener == "unix" else consumers.tcp_listener
    url, docker_host = make("prometheus")
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    found = run_prometheus(docker_host, run, names, tmp_path)
    assert set(names) <= found, "targets API lists %s, want %s; porthole refused:\n%s" % (
        sorted(found), names, json.dumps(consumers.refusals(proxy), indent=1))
    consumers.assert_all_allowed(proxy, "prometheus")


# ---- Prometheus' linter on what the registry renders (no proxy, no daemon) ----------------------

def test_label_values_are_escaped():
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    m = Metrics('1.0 "odd\\version"\n')
    m.request_done("default", "allow", '/x/{name*}/"q"', 0.01)
    text = m.render(0, 0)
    samples = parse_exposition(text)
    assert sample(samples, "porthole_info", version='1.0 "odd\\version"\n') == 1
    assert sample(samples, "porthole_requests_total", profile="default", decision="allow", endpoint='/x/{name*}/"q"') == 1
    assert promtool_problems(text) == ""


def test_promtool_accepts_a_busy_registry():
    m = Metrics()
    m.request_done("default", "allow", "/containers/{id}/json", 0.01)
    m.request_done("default", "deny", None, 0.0)
    m.upstream_error("timeout")
    m.reloaded(ok=False)
    text = m.render(2, 0)
    assert promtool_problems(text) == ""
    samples = parse_exposition(text)
    assert sample(samples, "porthole_upstream_errors_total", reason="timeout") == 1
    assert sample(samples, "porthole_reloads_total", result="failed") == 1


# ---- a real Prometheus scraping --metrics ----------------------------------------------------------

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
    prom, work = start_prometheus(PROMETHEUS_CONFIG.format(metrics_port=metrics_port), prometheus_port, tmp_path)
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
        assert info and info[0]["metric"]["version"] == VERSION
        health = prometheus_query(prometheus_port, "sum(porthole_upstream_errors_total)")
        assert health and health[0]["value"][1] == "0"
    finally:
        support.kill_group(prom)
        print("---- prometheus log tail ----\n" + (work / "log").read_text()[-3000:])
