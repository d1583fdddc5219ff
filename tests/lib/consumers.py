"""Helpers for the real-consumer tests (tests/consumers/).

Every consumer test has two halves:

(a) record: the consumer runs against a porthole whose listener enforces RECORD_PROFILE, a
    permissive profile of this suite (every GET/HEAD path a read-only consumer could want,
    any query; the one dangerous read a consumer here needs, `top` for `docker compose top`,
    only in RECORD_TOP_PROFILE). What the consumer sent is read back from porthole's JSON
    request log and reduced to (method, versioned?, rule template, query keys, filters shape):
    the facts a least-privilege preset must match. The record is attached to the test report
    and, when PORTHOLE_CONSUMER_CALLS names a file, appended to it as JSON lines.
(b) preset: the same consumer against the shipped rules.json with the listener's
    `?profile=NAME` set to the consumer's preset; it must work and porthole must have
    refused nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import support

RECORD_PROFILE = "record"
RECORD_TOP_PROFILE = "record-top"

_READ_PATHS = [
    "/version", "/info", "/events", "/system/df",
    "/containers/json", "/containers/{id}/json", "/containers/{id}/stats",
    "/images/json", "/images/{name*}/json", "/images/{name*}/history",
    "/networks", "/networks/{id}", "/volumes", "/volumes/{name}",
    "/services", "/services/{id}", "/tasks", "/tasks/{id}", "/nodes", "/nodes/{id}",
]

RECORD_RULES = {
    "version": 1,
    "description": "The consumer tests' recording policy: every read a consumer could need, any query.",
    "profiles": {
        "default": {
            "description": "Required by porthole; the consumer tests never use it.",
            "rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}],
        },
        RECORD_PROFILE: {
            "description": "Permissive, no dangerous read: records what a consumer sends.",
            "rules": [{"method": ["GET", "HEAD"], "path": "/_ping", "comment": "record"}]
                     + [{"method": ["GET", "HEAD"], "path": p} for p in _READ_PATHS],
        },
        RECORD_TOP_PROFILE: {
            "description": "record plus container top, for `docker compose top`.",
            "extends": RECORD_PROFILE,
            "rules": [{"method": "GET", "path": "/containers/{id}/top", "dangerous": True,
                       "comment": "compose top lists the processes: only to record it"}],
        },
    },
}


def record_rules_file() -> Path:
    return support.write_rules(RECORD_RULES)


def with_profile(url: str, profile: str) -> str:
    """A listener URL with `profile=NAME` added to its query."""
    return url + ("&" if "?" in url else "?") + "profile=" + profile


def unix_listener(profile: str) -> tuple[str, str]:
    """(listener URL with the profile, DOCKER_HOST URL) of a fresh unix listener."""
    url, path = support.unix_listen_url("p.sock", "mode=0660")
    return with_profile(url, profile), "unix://" + path


def tcp_listener(profile: str) -> tuple[str, str]:
    """(listener URL with the profile, DOCKER_HOST URL) of a fresh 127.0.0.1 TCP listener."""
    port = support.free_port()
    return "tcp://127.0.0.1:%d?profile=%s" % (port, profile), "tcp://127.0.0.1:%d" % port


# Query keys whose values are flags worth recording (a preset may list the exact values);
# the values of other keys (filters, since, until, ...) change with every run.
_FLAG_KEYS = {"all", "stream", "one-shot", "size", "limit", "trunc_cmd", "only_ids", "digests",
              "follow", "stdout", "stderr", "timestamps", "tail", "verbose"}


def _filters_shape(value: str) -> str:
    """`label:map,status:list` for a filters JSON value: which keys, which of the two shapes
    (Go SDK map `{"k":{"v":true}}`, dockerode/bollard list `{"k":["v"]}`)."""
    try:
        filters = json.loads(value)
    except ValueError:
        return "not-json"
    if not isinstance(filters, dict):
        return "not-an-object"
    parts = []
    for key in sorted(filters):
        kind = {dict: "map", list: "list"}.get(type(filters[key]), type(filters[key]).__name__)
        parts.append("%s:%s" % (key, kind))
    return ",".join(parts) or "empty"


def was_refused(line: dict) -> bool:
    """Denied, or answered with an error status. A stream that was allowed (status 2xx) and
    ended because the consumer went away is not a refusal."""
    if line.get("decision") == "allow":
        return False
    status = line.get("status")
    return line.get("decision") == "deny" or not isinstance(status, int) or status >= 400


def summarize(line: dict) -> dict:
    """One request log line reduced to what a preset has to match."""
    target = urlsplit(line["target"])
    segments = target.path.split("/")
    versioned = len(segments) > 1 and segments[1].startswith("v1.")
    query = parse_qsl(target.query, keep_blank_values=True)
    rule = line.get("rule") or ""
    template = rule.split(" ", 2)[2] if rule.count(" ") >= 2 else None
    summary = {
        "method": line["method"],
        "versioned": versioned,
        "path": template or ("/" + "/".join(segments[2 if versioned else 1:])),
        "query": sorted({k + "=" + v if k in _FLAG_KEYS else k for k, v in query}),
        "decision": "refused" if was_refused(line) else "allow",
    }
    filters = [v for k, v in query if k == "filters"]
    if filters:
        summary["filters"] = _filters_shape(filters[0])
    if was_refused(line):
        summary["reason"] = "%s %s: %s" % (line.get("decision"), line.get("status"), line.get("reason"))
    return summary


def recorded(proxy) -> list[dict]:
    """The distinct requests the proxy logged, summarized, in first-seen order."""
    seen, out = set(), []
    for line in proxy.requests_logged():
        summary = summarize(line)
        key = json.dumps(summary, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(summary)
    return out


def stop(proxy) -> None:
    """Stop the proxy if it runs (SIGTERM: it must exit 0). Afterwards its log is complete:
    every request, open streams included, has its request line."""
    if proxy.alive():
        problems = proxy.stop_problems()
        assert not problems, "\n\n".join(problems)


def stop_and_record(proxy) -> list[dict]:
    """stop() the proxy, then return what it recorded."""
    stop(proxy)
    return recorded(proxy)


def refusals(proxy) -> list[dict]:
    """Request log lines the proxy did not allow (denied or answered with an error); stops
    the proxy first, so that no line is missing."""
    stop(proxy)
    return [l for l in proxy.requests_logged() if was_refused(l)]


def report(consumer: str, calls: list[dict], record_property=None) -> None:
    """Attach the record to the test report and, with PORTHOLE_CONSUMER_CALLS, to that file."""
    text = "\n".join(format_call(c) for c in calls)
    print("---- %s sent ----\n%s" % (consumer, text))
    if record_property is not None:
        record_property("consumer_calls", json.dumps({"consumer": consumer, "calls": calls}))
    path = os.environ.get("PORTHOLE_CONSUMER_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"consumer": consumer, "calls": calls}) + "\n")


def format_call(call: dict) -> str:
    text = "%s %s%s" % (call["method"], "/v1.NN" if call["versioned"] else "", call["path"])
    if call["query"]:
        text += " ?" + "&".join(call["query"])
    if "filters" in call:
        text += " filters={%s}" % call["filters"]
    if call["decision"] != "allow":
        text += "  [refused: %s]" % call.get("reason")
    return text


def assert_all_allowed(proxy, consumer: str) -> None:
    refused = refusals(proxy)
    assert not refused, "%s: porthole refused %d request(s):\n%s" % (
        consumer, len(refused), "\n".join(json.dumps(l) for l in refused))


def assert_sent(calls: list[dict], method: str, path: str) -> None:
    """The record holds at least one `method path` request (a preset must cover it)."""
    assert any(c["method"] == method and c["path"] == path for c in calls), \
        "no %s %s in the record:\n%s" % (method, path, "\n".join(format_call(c) for c in calls))
