"""The metrics registry: counters the proxy keeps as it works, rendered on demand in Prometheus'
text exposition format (version 0.0.4) by the --metrics listener (ops.metrics_server).

Every label value comes from a bounded set: a profile name of the rules, a decision (allow,
would_deny, deny, error), a rule's path template (never the raw path), one of UPSTREAM_ERROR_REASONS, a
reload result. So the number of series is bounded by the rules file, whatever clients send.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from porthole import VERSION


UPSTREAM_ERROR_REASONS = ("connect_failed", "timeout", "protocol_error", "closed")
RELOAD_RESULTS = ("ok", "failed")
NO_RULE = "(none)"  # the endpoint label of a request that matched no rule (refused before one)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def escape_label_value(value: str) -> str:
    """Backslash, double quote and line feed escaped, as the exposition format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Metrics:
    """The proxy's counters and its one histogram: plain dictionaries, no I/O, no sockets.

    Rule 1: counting is a dictionary increment: it runs once per request, in the loop.
    Rule 2: a label value is never taken from a client's bytes (see the module's docstring).
    Rule 3: the fixed label sets (upstream error reasons, reload results) are rendered from the
            start, at 0, so rate() sees the first increment.
    """

    def __init__(self, version: str = VERSION) -> None:
        self.version = version
        self.requests: dict[tuple[str, str, str], int] = {}  # (profile, decision, endpoint) -> count
        self.duration_buckets = [0] * len(DURATION_BUCKETS)  # per bucket, not cumulative
        self.duration_count = 0
        self.duration_sum = 0.0
        self.upstream_errors = dict.fromkeys(UPSTREAM_ERROR_REASONS, 0)
        self.reloads = dict.fromkeys(RELOAD_RESULTS, 0)

    def request_done(self, profile: str, decision: str, endpoint: str | None, duration: float | None) -> None:
        """One exchange ended; `duration` is None for a stream (it has no meaningful one)."""
        key = (profile, decision, endpoint or NO_RULE)
        self.requests[key] = self.requests.get(key, 0) + 1
        if duration is not None:
            self.duration_count += 1
            self.duration_sum += duration
            for i, bound in enumerate(DURATION_BUCKETS):
                if duration <= bound:
                    self.duration_buckets[i] += 1
                    break

    def upstream_error(self, reason: str) -> None:
        if reason not in self.upstream_errors:
            raise ValueError(f"unknown upstream error reason {reason!r}")
        self.upstream_errors[reason] += 1

    def reloaded(self, ok: bool) -> None:
        self.reloads["ok" if ok else "failed"] += 1

    def render(self, open_connections: int, open_streams: int) -> str:
        """The exposition text, gauges as given (the proxy knows them; the registry does not)."""
        lines: list[str] = []

        def family(name: str, kind: str, text: str, samples: Iterable[tuple[str, Sequence[tuple[str, str]], float]]) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{sample}{_labels(labels)} {_number(value)}" for sample, labels, value in samples)

        name = "porthole_requests_total"
        family(name, "counter", "Requests answered, by profile, decision and the matching rule's path template.",
               ((name, (("profile", p), ("decision", d), ("endpoint", e)), n)
                for (p, d, e), n in sorted(self.requests.items())))
        name = "porthole_request_duration_seconds"
        cumulative, buckets = 0, []
        for bound, count in zip(DURATION_BUCKETS, self.duration_buckets):
            cumulative += count
            buckets.append((name + "_bucket", (("le", _number(bound)),), cumulative))
        buckets.append((name + "_bucket", (("le", "+Inf"),), self.duration_count))
        buckets.append((name + "_sum", (), self.duration_sum))
        buckets.append((name + "_count", (), self.duration_count))
        family(name, "histogram", "Time from request head to the answer's delivery, finite requests only (not streams).",
               buckets)
        family("porthole_open_connections", "gauge", "Client connections open now.",
               [("porthole_open_connections", (), open_connections)])
        family("porthole_open_streams", "gauge", "Streaming requests (events, followed logs, stats) open now.",
               [("porthole_open_streams", (), open_streams)])
        name = "porthole_upstream_errors_total"
        family(name, "counter", "Failures talking to the Docker daemon that reached a client, by reason.",
               ((name, (("reason", r),), n) for r, n in self.upstream_errors.items()))
        name = "porthole_reloads_total"
        family(name, "counter", "Rules reloads, by result (failed: the old policy was kept).",
               ((name, (("result", r),), n) for r, n in self.reloads.items()))
        family("porthole_info", "gauge", "Porthole's version.", [("porthole_info", (("version", self.version),), 1)])
        return "\n".join(lines) + "\n"
