"""Signals: one that fails is logged and never drops the rest of its batch; a SIGHUP during the
shutdown grace reloads nothing it cannot and still writes what was learned (issue "(2 of 5)",
item 11: with a TLS listener it raised StopIteration and skipped the learn-file write)."""
from __future__ import annotations

import io
import json
import signal

from porthole.app.wiring import Proxy
from porthole.core.policy import load_policy
from porthole.runtime.config import Settings, parse_endpoint
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop, SignalPipe

POLICY = load_policy(json.dumps({"version": 1, "profiles": {"default": {"rules": [
    {"method": "GET", "path": "/_ping"}]}}}))


def test_a_failing_signal_does_not_drop_the_rest_of_its_batch():
    stream = io.StringIO()
    loop = Loop(Log("json", "debug", stream))
    seen = []

    def on_signal(signum):
        seen.append(signum)
        if len(seen) == 1:
            raise RuntimeError("the first one fails")

    pipe = SignalPipe(loop, on_signal)
    try:
        pipe.writer.send(bytes([signal.SIGHUP, signal.SIGTERM]))
        pipe.on_io(0)
    finally:
        pipe.close()
    assert seen == [signal.SIGHUP, signal.SIGTERM]
    assert "internal_error" in stream.getvalue()


def test_sighup_after_shutdown_began_with_a_tls_listener(tmp_path):
    tls = parse_endpoint(f"tcp://127.0.0.1:1?tlscert={tmp_path}/c.pem&tlskey={tmp_path}/k.pem", listener=True)
    settings = Settings(listeners=(tls,), upstream=parse_endpoint("unix:///nonexistent.sock", listener=False),
                        rules_path=tmp_path / "rules.json", learn_path=tmp_path / "learned.json")
    stream = io.StringIO()
    proxy = Proxy(settings, POLICY, Log("json", "debug", stream))
    proxy.tls_contexts[tls.url] = object()  # as bind() left it; the listener itself is gone:
    proxy.listeners.clear()  # begin_shutdown closed it
    written = []
    proxy.learning.write = written.append  # type: ignore[union-attr]
    proxy.on_signal(signal.SIGHUP)
    assert written == ["SIGHUP"]
    assert "tls_reload_failed" in stream.getvalue()  # the files do not exist: the old context is kept
