"""Prometheus' `docker_sd` (Debian's `prometheus`) discovering the private daemon's containers
through porthole: first with the suite's recording profile (what does it send?), then with
the shipped `prometheus` preset (does it work, with nothing refused?).

Prometheus listens on 127.0.0.1 only; discovery refreshes every second; the discovered
targets are relabelled to Prometheus' own loopback address, so nothing but loopback is
ever scraped. Its targets API must list the suite's containers."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

import consumers
import fake_upstream as fu
import support

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
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


def run_prometheus(docker_host: str, run: str, want: list, tmp_path) -> set:
    """Start Prometheus with docker_sd pointed at docker_host; wait (bounded) until its targets
    API lists every container in `want`; return what it listed."""
    port = support.free_port()
    work = tmp_path / ("prom-" + uuid.uuid4().hex[:6])
    work.mkdir()
    config = work / "prometheus.yml"
    config.write_text(CONFIG.format(host=docker_host, label=LABEL, run=run, port=port))
    proc = subprocess.Popen(
        [PROMETHEUS, "--config.file", str(config), "--web.listen-address", "127.0.0.1:%d" % port,
         "--storage.tsdb.path", str(work / "data"), "--storage.tsdb.retention.time", "1h"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"),
        start_new_session=True)
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
