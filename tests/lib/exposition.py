"""Prometheus' exposition format, read back: what porthole's --metrics writes, parsed into samples
(unit/runtime/test_metrics.py, daemon/test_metrics.py, consumers/test_consumer_prometheus.py), and
Prometheus' own linter's verdict on it (`promtool check metrics`, Debian's prometheus package)."""

from __future__ import annotations

import re
import shutil
import subprocess

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
