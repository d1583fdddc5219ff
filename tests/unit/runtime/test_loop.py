"""porthole/runtime/loop.py: the Loop's deadlines, guard and turns, and Timer, driven by hand on a
fake clock (the `env` fixture, tests/lib/parts.py)."""

from __future__ import annotations

import io
import json
import selectors
import signal
import socket
import threading

import pytest

from porthole.app.wiring import Proxy
from porthole.core.policy import load_policy
from porthole.runtime.config import Settings, parse_endpoint
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop, SignalPipe, Timer, Waker

pytestmark = pytest.mark.timeout(60)


class Part:
    def __init__(self, loop=None, again: bool = False) -> None:
        self.fired: list[float] = []
        self.turns = 0
        self.aborted: list[str] = []
        self.loop = loop
        self.again = again

    def on_deadline(self, now):
        self.fired.append(now)

    def on_turn(self):
        self.turns += 1
        if self.again:
            self.loop.soon(self)

    def abort(self, reason):
        self.aborted.append(reason)


def test_loop_earlier_deadline_replaces_later(env):
    loop, part = env.loop, Part()
    loop.set_deadline(part, 1010.0)
    loop.set_deadline(part, 1005.0)
    loop.fire_deadlines(1004.0)
    assert part.fired == []
    loop.fire_deadlines(1005.0)
    assert part.fired == [1005.0]
    loop.fire_deadlines(2000.0)  # the stale entry at 1010 never fires
    assert part.fired == [1005.0]


def test_loop_later_deadline_reschedules_not_fires(env):
    loop, part = env.loop, Part()
    loop.set_deadline(part, 1005.0)
    loop.set_deadline(part, 1010.0)
    loop.fire_deadlines(1006.0)
    assert part.fired == []
    assert loop.scheduled[part][0] == 1010.0
    loop.fire_deadlines(1009.9)
    assert part.fired == []
    loop.fire_deadlines(1010.0)
    assert part.fired == [1010.0]
    loop.fire_deadlines(5000.0)
    assert part.fired == [1010.0]


def test_loop_cancelled_deadline_never_fires(env):
    loop, part, other = env.loop, Part(), Part()
    loop.set_deadline(part, 1005.0)
    loop.set_deadline(part, None)
    loop.set_deadline(other, 1001.0)
    loop.fire_deadlines(5000.0)
    assert part.fired == [] and other.fired == [5000.0]
    # cancelled then set again later: only the new one fires, once
    loop.set_deadline(part, 6000.0)
    loop.set_deadline(part, None)
    loop.set_deadline(part, 7000.0)
    loop.fire_deadlines(6500.0)
    assert part.fired == []
    loop.fire_deadlines(7000.0)
    assert part.fired == [7000.0]
    loop.fire_deadlines(9000.0)
    assert part.fired == [7000.0]


def test_loop_many_replacements_fire_once(env):
    loop, part = env.loop, Part()
    for i in range(500):  # exercises the stale-entry compaction too
        loop.set_deadline(part, 2000.0 - i if i % 2 else 1000.0 + i)
    final = loop.wanted[part]
    loop.fire_deadlines(final - 0.5)
    assert part.fired == []
    loop.fire_deadlines(10_000.0)
    assert part.fired == [10_000.0]
    assert len(loop.heap) <= 2 * len(loop.scheduled) + 65


def test_loop_run_once_fires_by_fake_clock(env):
    loop, part = env.loop, Part()
    loop.set_deadline(part, env.clock.now + 5)
    loop.run_once(0)
    assert part.fired == []
    env.clock.now += 5
    loop.run_once(0)
    assert part.fired == [env.clock.now]


# ---- an idle loop sleeps until its next real deadline (Loop Rule 4; issue "(3 of 5)", item 3)

def waits(loop):
    """Record the timeout of every select() the loop makes (and report nothing ready)."""
    seen = []

    def select(timeout=None):
        seen.append(timeout)
        return []

    loop.selector.select = select
    return seen


def test_an_idle_loop_waits_for_its_next_deadline_and_no_longer_ticks(env):
    seen = waits(env.loop)
    env.loop.run_once()
    assert seen == [None]  # nothing due: it waits for I/O, for as long as it takes
    part = Part()
    env.loop.set_deadline(part, env.clock.now + 30)
    env.loop.run_once()
    assert seen[-1] == 30  # not 1 s: no tick of its own
    env.loop.run_once(5.0)
    assert seen[-1] == 5.0  # a max_wait sooner than the deadline still counts
    env.clock.now += 30
    env.loop.run_once()
    assert seen[-1] == 0 and part.fired == [env.clock.now]


def test_a_stale_heap_entry_never_wakes_the_loop(env):
    seen = waits(env.loop)
    moved, dropped, gone, kept = Part(), Part(), Part(), Part()
    start = env.clock.now
    env.loop.set_deadline(moved, start + 10)
    env.loop.set_deadline(moved, start + 50)  # later: its entry at +10 stays in the heap
    env.loop.set_deadline(dropped, start + 5)
    env.loop.set_deadline(dropped, None)
    env.loop.set_deadline(gone, start + 1)
    env.loop.cancel(gone)
    env.loop.set_deadline(kept, start + 70)
    env.loop.run_once()
    assert seen == [50]  # not 1, 5 or 10: those entries are stale
    env.clock.now = start + 50
    env.loop.run_once()
    assert moved.fired == [start + 50] and seen[-1] == 0
    env.loop.run_once()
    assert seen[-1] == 20  # then kept's, at +70
    assert not dropped.fired and not gone.fired and not kept.fired


def test_a_waker_ends_the_wait_from_another_thread():
    loop = Loop(Log("json", "debug", io.StringIO()))
    waker = Waker(loop)
    try:
        threading.Timer(0.05, waker.wake).start()
        assert loop.run_once() == 1  # would block for good without it: the test's timeout says so
        waker.wake()
        waker.wake()
        assert loop.run_once(0) == 1  # the wake-ups are drained in one go
        assert loop.run_once(0) == 0
    finally:
        waker.close()
        loop.selector.close()
    waker.wake()  # after close: nothing to wake, no error


def test_loop_guard_logs_and_aborts(env):
    loop = env.loop

    class Broken(Part):
        def on_deadline(self, now):
            raise ZeroDivisionError("boom in on_deadline")

    broken, fine = Broken(), Part()
    loop.set_deadline(broken, env.clock.now)
    loop.set_deadline(fine, env.clock.now)
    loop.run_once(0)
    assert broken.aborted == ["internal error"]
    assert fine.fired == [env.clock.now]  # the loop went on
    errors = [e for e in env.log_events() if e["event"] == "internal_error"]
    assert len(errors) == 1
    assert errors[0]["level"] == "error" and errors[0]["part"] == "Broken"
    assert "ZeroDivisionError" in errors[0]["error"]
    assert "Traceback" in errors[0]["traceback"] and "boom in on_deadline" in errors[0]["traceback"]


def test_loop_guard_on_io_and_abort_raising(env):
    loop = env.loop
    a, b = socket.socketpair()
    env.sockets += [a, b]

    class BadIO:
        calls = 0

        def on_io(self, mask):
            raise KeyError("io")

        def abort(self, reason):
            BadIO.calls += 1
            loop.forget(a)
            raise RuntimeError("abort raising is swallowed too")

    loop.watch(a, selectors.EVENT_WRITE, BadIO())
    loop.run_once(0)
    loop.run_once(0)
    assert BadIO.calls == 1
    assert [e["part"] for e in env.log_events() if e["event"] == "internal_error"] == ["BadIO"]


def test_loop_turns_once_per_pass_and_nonblocking(env):
    loop = env.loop
    timeouts: list[float] = []
    real_select = loop.selector.select

    def select(timeout=None):
        timeouts.append(timeout)
        return real_select(0)

    loop.selector.select = select
    again, once = Part(loop, again=True), Part(loop)
    loop.soon(again)
    loop.soon(once)
    loop.soon(once)  # asking twice is still one turn
    loop.run_once(5.0)
    assert (again.turns, once.turns) == (1, 1)
    assert timeouts[-1] == 0.0  # turns pending: select does not block
    loop.run_once(5.0)
    loop.run_once(5.0)
    assert (again.turns, once.turns) == (3, 1)  # re-asked inside its turn: next pass, not now
    assert timeouts[-1] == 0.0
    again.again = False
    loop.run_once(5.0)
    loop.run_once(5.0)
    assert again.turns == 4
    assert timeouts[-1] == 5.0  # nothing pending: select may block
    deadline = Part()
    loop.set_deadline(deadline, env.clock.now + 2.0)
    loop.run_once(5.0)
    assert timeouts[-1] == 2.0  # ... but not past the next deadline


def test_timer_fires_its_callback_once(env):
    fired = []
    timer = Timer(lambda: fired.append(env.clock.now))
    env.loop.set_deadline(timer, env.clock.now + 3)
    env.clock.now += 3
    env.run()
    env.clock.now += 100
    env.run()
    assert fired == [env.clock.now - 100]


# ---- Signals: one that fails is logged and never drops the rest of its batch; a SIGHUP during the
# shutdown grace reloads nothing it cannot and still writes what was learned (issue "(2 of 5)",
# item 11: with a TLS listener it raised StopIteration and skipped the learn-file write).

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
