"""The one selectors loop, its deadlines and turns; timers; signals as loop events.

Every part of porthole is driven from here: an object with on_io(mask), on_turn(),
on_deadline(now) and abort(reason), as it needs them. One thread runs it; the only other
thread porthole ever starts re-resolves a TCP daemon's name (connections.pool), and ends the
loop's wait through a Waker when it is done.

An idle loop sleeps: nothing wakes it but I/O, a signal, a Waker or its next deadline (Loop
Rule 4), so an idle proxy costs no CPU between the few timers it really has.
"""
from __future__ import annotations

import contextlib
import enum
import heapq
import itertools
import selectors
import signal
import socket
import time
import traceback
from typing import Any, Callable

from porthole.runtime.log import Log


class StateError(RuntimeError):
    """An illegal state transition: a bug in porthole, never a client's doing."""


def illegal_transition(old: enum.Enum, new: enum.Enum) -> StateError:
    return StateError(f"illegal transition {old.name} -> {new.name}")


def set_interest(selector: selectors.BaseSelector, sock: socket.socket, mask: int, data: Any) -> None:
    """Register, modify or unregister a socket so the selector watches exactly `mask`."""
    try:
        key = selector.get_key(sock)
    except KeyError:
        if mask:
            selector.register(sock, mask, data)
        return
    if not mask:
        selector.unregister(sock)
    elif key.events != mask:
        selector.modify(sock, mask, data)


class Loop:
    """One selectors loop. A part is any object with on_io(mask), on_turn(), on_deadline(now)
    and abort(reason), as it needs them.

    Rule 1: every callback runs under guard(): an exception is logged with its traceback, the
            part that raised is aborted, and the loop goes on.
    Rule 2: a part has at most one deadline; setting one replaces the last. The heap may hold
            stale entries: an entry fires only while it is the part's scheduled one, and a part
            whose deadline moved later is rescheduled, not fired. A stale entry never wakes the
            loop: next_deadline() settles the ones at the top of the heap before a pass waits.
    Rule 3: a part with more work than one pass allows asks for a turn (soon()). select() does
            not block while turns are pending, and each pass gives each pending part one turn.
    Rule 4: with no turn pending, a pass waits until the earliest deadline a part wants (or
            max_wait, if it is given and sooner), and with none at all until I/O or a signal
            comes: the loop has no tick of its own.
    """

    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        self.selector = selectors.DefaultSelector()
        self.heap: list[tuple[float, int, Any]] = []
        self.wanted: dict[Any, float] = {}  # part -> when it wants its deadline
        self.scheduled: dict[Any, tuple[float, int]] = {}  # part -> its live heap entry
        self.turns: dict[Any, None] = {}  # an ordered set
        self.passes = 0  # run_once calls so far: per-pass budgets reset when it moves
        self.sequence = itertools.count()

    def watch(self, sock: socket.socket, mask: int, part: Any) -> None:
        set_interest(self.selector, sock, mask, part)

    def forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def set_deadline(self, part: Any, when: float | None) -> None:
        """Replace the part's deadline (None: none for now; its heap entry may stay until it
        reaches the top of the heap, so that a deadline set again soon needs no new entry)."""
        if when is None:
            self.wanted.pop(part, None)
            return
        self.wanted[part] = when
        live = self.scheduled.get(part)
        if live is None or when < live[0]:
            self._schedule(part, when)

    def _schedule(self, part: Any, when: float) -> None:
        entry = (when, next(self.sequence))
        self.scheduled[part] = entry
        heapq.heappush(self.heap, (*entry, part))
        if len(self.heap) > 2 * len(self.scheduled) + 64:  # drop stale entries now and then
            self.heap = [(*entry, p) for p, entry in self.scheduled.items()]
            heapq.heapify(self.heap)

    def cancel(self, part: Any) -> None:
        """The part is gone: forget its deadline entirely."""
        self.wanted.pop(part, None)
        self.scheduled.pop(part, None)

    def soon(self, part: Any) -> None:
        self.turns[part] = None

    def guard(self, part: Any, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a bug on one connection must not stop the others
            self.log("error", "internal_error", part=type(part).__name__, error=repr(exc),
                     traceback=traceback.format_exc(limit=8))
            abort = getattr(part, "abort", None)
            if abort is not None:
                with contextlib.suppress(Exception):
                    abort("internal error")

    def run_once(self, max_wait: float | None = None) -> int:
        """One pass: ready I/O, then pending turns, then due deadlines (Rule 4: the wait ends at
        the next deadline; None, no max_wait: no other limit). Returns how many callbacks ran
        (0: nothing was ready)."""
        timeout = 0.0 if self.turns else max_wait
        when = self.next_deadline()
        if when is not None:
            due = max(0.0, when - self.clock())
            timeout = due if timeout is None else min(timeout, due)
        events = self.selector.select(timeout)
        self.passes += 1
        for key, mask in events:
            self.guard(key.data, key.data.on_io, mask)
        turns, self.turns = self.turns, {}
        for part in turns:
            self.guard(part, part.on_turn)
        return len(events) + len(turns) + self.fire_deadlines(self.clock())

    def next_deadline(self) -> float | None:
        """The earliest deadline a part wants, or None (Rule 2): stale entries at the top of the
        heap are dropped, and a part whose deadline moved later is rescheduled, as
        fire_deadlines would do, but without waking up for them."""
        while self.heap:
            when, seq, part = self.heap[0]
            if self.scheduled.get(part) != (when, seq):
                heapq.heappop(self.heap)  # replaced or cancelled
                continue
            wanted = self.wanted.get(part)
            if wanted is not None and wanted <= when:
                return when
            heapq.heappop(self.heap)
            del self.scheduled[part]
            if wanted is not None:
                self._schedule(part, wanted)  # (may rebuild self.heap)
        return None

    def fire_deadlines(self, now: float) -> int:
        fired = 0
        while self.heap and self.heap[0][0] <= now:
            when, seq, part = heapq.heappop(self.heap)
            if self.scheduled.get(part) != (when, seq):
                continue  # stale: replaced or cancelled
            del self.scheduled[part]
            wanted = self.wanted.get(part)
            if wanted is None:
                continue
            if wanted > now:
                self._schedule(part, wanted)
                continue
            del self.wanted[part]
            self.guard(part, part.on_deadline, now)
            fired += 1
        return fired


class SignalPipe:
    """Signals arrive as bytes on a socketpair (signal.set_wakeup_fd): the loop handles them in
    order, guarded like any other I/O, never inside an arbitrary bytecode of a callback."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, loop: Loop, on_signal: Callable[[int], None]) -> None:
        self.loop = loop
        self.on_signal = on_signal
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            signal.signal(signum, lambda num, frame: None)  # the wakeup fd carries it
        loop.watch(self.reader, selectors.EVENT_READ, self)

    def on_io(self, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in self.reader.recv(4096):
                self.loop.guard(self, self.on_signal, signum)  # a failing one never drops the rest

    def close(self) -> None:
        """After this a late signal is ignored: the onefile bootloaders forward a signal sent
        to the whole process group, so a copy can arrive while we exit."""
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        self.loop.forget(self.reader)
        self.reader.close()
        self.writer.close()


class Waker:
    """Lets another thread end the loop's wait (Loop Rule 4: it may otherwise sleep until its
    next deadline, or for good): wake() puts a byte on a socketpair the loop watches. Made on
    the loop's thread; wake() may be called from any thread, also after close()."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        loop.watch(self.reader, selectors.EVENT_READ, self)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full: a wake-up is pending anyway; closed: nothing to wake
            self.writer.send(b"\0")

    def on_io(self, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.loop.forget(self.reader)
        self.reader.close()
        self.writer.close()


class Timer:
    """A deadline with a callback, for the loop's heap."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback

    def on_deadline(self, now: float) -> None:
        self.callback()
