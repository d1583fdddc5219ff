"""porthole/runtime/metrics.py: the registry alone, rendered and read back (tests/lib/exposition.py).
(Prometheus' linter on what it renders: tests/consumers/test_consumer_prometheus.py.)"""

from __future__ import annotations

import pytest

from exposition import parse_exposition, sample
from porthole.runtime.metrics import DURATION_BUCKETS, Metrics

pytestmark = pytest.mark.timeout(120)


def test_fresh_registry_renders_every_family_and_the_fixed_label_sets_at_zero():
    samples = parse_exposition(Metrics("9.9.9").render(open_connections=0, open_streams=0))
    for reason in ("connect_failed", "timeout", "protocol_error", "closed"):
        assert sample(samples, "porthole_upstream_errors_total", reason=reason) == 0
    assert sample(samples, "porthole_reloads_total", result="ok") == 0
    assert sample(samples, "porthole_reloads_total", result="failed") == 0
    assert sample(samples, "porthole_info", version="9.9.9") == 1
    assert sample(samples, "porthole_open_connections") == 0
    assert sample(samples, "porthole_request_duration_seconds_count") == 0


def test_requests_are_counted_by_profile_decision_and_template():
    m = Metrics()
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
    m = Metrics()
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
    assert len(bounds) == len(DURATION_BUCKETS)


def test_an_unknown_upstream_error_reason_is_a_bug():
    with pytest.raises(ValueError):
        Metrics().upstream_error("something the daemon said")
