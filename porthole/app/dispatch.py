"""What happens to each request a client sent: decided, planned, sent on its way, and logged.

A request's life here: decide_with_mode (its Decision cached per distinct request), the
stream cap, plan_response_filter (its filters), then one of four sources (connections.sources):
a Lookup first under a visible scope, a SharedStream for /events, a CoalescedRead for an
identical GET known to be finite (decide.is_known_finite), or a Relay of its own. exchange_done closes its life: counted in the
metrics, written to the log.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterable

import h11

from porthole.connections.client import ClientConnection
from porthole.connections.exchange import Exchange
from porthole.connections.pool import UpstreamPool
from porthole.connections.sources import CoalescedRead, Lookup, Relay, SharedStream
from porthole.core.decide import Decision, decide_with_mode, forwarded_request, is_known_finite, is_shareable
from porthole.core.objects import Filtering, ObjectHidden
from porthole.core.filters import (Ambiguous, AmongVisible, DEFAULT_FILTERING, FilterPlan, ResponseFilter,
                                   daemon_error, filter_transform, plan_response_filter,
                                   resolve_among_visible, resolved_object, visible_counts, visible_listing)
from porthole.core.policy import Policy
from porthole.core.rewrite import TransformError
from porthole.core.target import Refusal, Target, canonicalize_target
from porthole.ops.learn import LearnFile, learn_template
from porthole.runtime.config import Settings
from porthole.runtime.log import Log
from porthole.runtime.loop import Loop
from porthole.runtime.metrics import Metrics


REASONS = {400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}  # (daemon_error's)
MAX_CACHED_DECISIONS = 256  # distinct requests whose decisions are kept (then all are dropped)


class Dispatch:
    """Each request, from its head to its source; each exchange's end, counted and logged.

    Rule 1: a cached Decision is used only under the policy it was decided under; changing
            `policy` (a reload) forgets them all.
    Rule 2: a client's open streams are counted up here (on_request) and down here
            (exchange_done), and no client holds more than --max-streams-per-client.
    Rule 3: every exchange is logged and counted exactly once (exchange_done, which the
            client connection calls once per exchange: ClientConnection Rule 4). Its log line
            says how it ended ("complete", "client closed", "aborted"); the metrics count its
            decision only (allow, would_deny, deny, error), a bounded set of labels.
    Rule 4: after a reload no stream goes on under rules that no longer hold: one whose client's
            profile, decision or filtering the new policy changes is ended (rules_changed); its
            client asks again and is decided under the new policy.
    """

    def __init__(self, settings: Settings, policy: Policy, loop: Loop, pool: UpstreamPool, log: Log,
                 metrics: Metrics, learning: LearnFile | None) -> None:
        self.settings = settings
        self.policy = policy
        self.loop = loop
        self.pool = pool
        self.log = log
        self.metrics = metrics
        self.learning = learning
        self.streams_per_client: dict[str, int] = {}
        self.shared_streams: dict[str, SharedStream] = {}
        self.coalesced: dict[tuple, CoalescedRead] = {}
        # decide() is a pure function of the policy and the request's facts: an identical
        # request (keep-alive pollers send the same bytes) reuses its Decision, and its plan and
        # forwarded request when nothing is filtered. Forgotten when the policy changes.
        self.decisions: dict[tuple, tuple[Decision, FilterPlan | None, h11.Request | None]] = {}
        self.decided_under = policy

    def on_request(self, client: ClientConnection, exchange: Exchange) -> None:
        """A request head was parsed: refuse it, or send it on its way."""
        facts = exchange.facts
        try:
            if client.head_size > self.settings.max_head_bytes:
                raise Refusal(431, f"request head of {client.head_size} bytes exceeds "
                                   f"--max-head-bytes {self.settings.max_head_bytes}", close=True)
            if self.decided_under is not self.policy:  # decided under another policy: forget them
                self.decisions.clear()
                self.decided_under = self.policy
            key = (facts.profile, facts.method, facts.target, tuple(facts.headers), facts.listener_kind,
                   facts.http_version)
            cached = self.decisions.get(key)
            decision = cached[0] if cached else decide_with_mode(self.policy, facts, self.settings.allow_hosts,
                                                              self.learning is not None)
            if decision.streaming:
                active = self.streams_per_client.get(client.identity, 0)
                if active >= self.settings.max_streams_per_client:
                    raise Refusal(429, f"this client already has {active} streams open "
                                       f"(--max-streams-per-client {self.settings.max_streams_per_client})")
        except Refusal as refusal:
            if self.learning is not None and refusal.kind == "dangerous":
                self.learning.record(client, facts.method, canonicalize_target(facts.target), forwarded=False)
            client.refuse(refusal)
            return
        filtering = self.policy.filtering.get(facts.profile, DEFAULT_FILTERING)
        if cached and cached[1] is not None:
            plan, request = cached[1], cached[2]
        else:
            try:
                plan = plan_response_filter(filtering, facts.method, decision.target)
            except Refusal as refusal:
                client.refuse(refusal)
                return
            request = forwarded_request(plan.method, plan.target, facts.headers)
            if len(self.decisions) >= MAX_CACHED_DECISIONS:
                self.decisions.clear()
            # a plan with a filter holds per-exchange counts: only its decision is kept
            self.decisions[key] = (decision, None, None) if plan.filter or plan.lookup else (decision, plan, request)
        exchange.decision = decision
        if decision.would_deny is not None:
            exchange.outcome, exchange.reason = "would_deny", decision.would_deny
        if self.learning is not None:
            self.learning.record(client, facts.method, decision.target, forwarded=True)
        if decision.streaming:
            self.streams_per_client[client.identity] = self.streams_per_client.get(client.identity, 0) + 1
        if plan.lookup is not None or plan.ask_first is not None:
            self.look_up(exchange, plan, filtering)
            return
        if plan.filter is not None:
            exchange.filter = plan.filter
            exchange.transform = filter_transform(plan.filter, self.settings.max_filter_bytes)
        if is_shareable(facts.method, decision.target):
            self.join_stream(exchange, request)
        elif (self.settings.coalesce and plan.method == facts.method == "GET" and is_known_finite(decision.target)
              and facts.profile not in self.policy.uncoalesced):
            self.coalesce(exchange, request)
        else:
            Relay(self.pool, exchange, request).start()

    def look_up(self, exchange: Exchange, plan: FilterPlan, filtering: Filtering) -> None:
        """Under a visible scope, ask the daemon first (a Lookup): which object a per-object request
        names (then forward it by that object's full ID), an inspect's own answer (answered from
        it, filtered), or the visible containers /info counts. An answer that depends on objects
        the profile cannot see (an invisible object, an ambiguous name) is asked again among the
        visible ones; a hidden object is answered exactly as the daemon answers a missing one."""
        target, facts = exchange.decision.target, exchange.facts  # type: ignore[union-attr]
        libpod = target.segments[0] == "libpod"
        if plan.ask_first == "visible containers":
            self.count_visible(exchange, plan, filtering, libpod)
            return
        kind = plan.lookup or plan.ask_first
        at = 2 if libpod else 1  # the object's name, after its collection
        name = target.segments[at]
        inspect = plan.filter is not None  # the request is itself the question
        exchange.filter = plan.filter or ResponseFilter(filtering, kind, name)  # type: ignore[arg-type]
        about = target if inspect else Target(
            target.version, target.segments[:at + 1] + (("json",) if kind == "container" else ()), ())
        first = Lookup(self.pool, exchange, forwarded_request("GET", about, facts.headers), lambda *a: resolved(*a))

        def forward(full_id: str) -> None:
            by_id = Target(target.version, target.segments[:at] + (full_id,) + target.segments[at + 1:], target.query)
            if inspect:
                exchange.transform = filter_transform(plan.filter, self.settings.max_filter_bytes)  # type: ignore[arg-type]
            Relay(self.pool, exchange, forwarded_request(plan.method, by_id, facts.headers)).start()

        def resolved(status: int, document: Any) -> None:
            try:
                full_id = resolved_object(kind, name, status, document, filtering)  # type: ignore[arg-type]
            except AmongVisible as asked:
                listing = visible_listing(kind, libpod, target.version, filtering)  # type: ignore[arg-type]
                Lookup(self.pool, exchange, forwarded_request("GET", listing, facts.headers),
                       partial(listed, asked.ambiguous)).start()
                return
            except ObjectHidden:  # missing, or an error: the daemon's own answer (never a 2xx unfiltered)
                if status < 400:
                    exchange.transform_failed(TransformError(f"the daemon answered {status} about the object"))
                else:
                    answer_from(first)
                return
            except TransformError as exc:
                exchange.transform_failed(exc)
                return
            if inspect:  # its own answer, about a visible object: filtered, not asked again
                answer_from(first, plan.filter)
            else:
                forward(full_id)

        def listed(ambiguous: bool, status: int, document: Any) -> None:
            try:
                full_id = resolve_among_visible(kind, name, status, document, filtering)  # type: ignore[arg-type]
            except ObjectHidden as hidden:
                if ambiguous and isinstance(hidden, Ambiguous) and kind == "container":
                    answer_from(first)  # still ambiguous: the daemon's answer names nothing but the name
                else:
                    self.answer_as_daemon(exchange, daemon_error(hidden, kind, name, _headers(first.head)),  # type: ignore[arg-type]
                                          first.head, hidden.status == 404)
                return
            except TransformError as exc:
                exchange.transform_failed(exc)
                return
            forward(full_id)

        def answer_from(lookup: Lookup, response_filter: ResponseFilter | None = None) -> None:
            if response_filter is not None:
                exchange.transform = filter_transform(response_filter, self.settings.max_filter_bytes)
            exchange.send_head(lookup.head)  # type: ignore[arg-type]
            exchange.send_body(bytes(lookup.body))
            exchange.end_body()

        first.start()

    def count_visible(self, exchange: Exchange, plan: FilterPlan, filtering: Filtering, libpod: bool) -> None:
        """/info under a visible scope: its container counts are of the visible containers."""
        target, facts = exchange.decision.target, exchange.facts  # type: ignore[union-attr]
        exchange.filter = plan.filter
        listing = visible_listing("container", libpod, target.version, filtering)

        def counted(status: int, document: Any) -> None:
            try:
                plan.filter.counts = visible_counts(status, document, filtering)  # type: ignore[union-attr]
            except TransformError as exc:
                exchange.transform_failed(exc)
                return
            exchange.transform = filter_transform(plan.filter, self.settings.max_filter_bytes)  # type: ignore[arg-type]
            Relay(self.pool, exchange, forwarded_request(plan.method, target, facts.headers)).start()

        Lookup(self.pool, exchange, forwarded_request("GET", listing, facts.headers), counted).start()

    def answer_as_daemon(self, exchange: Exchange, answer: tuple[int, bytes], like: h11.Response | None,
                         hidden: bool) -> None:
        """Answer as the daemon answers a missing or ambiguous name: its status and body
        (daemon_error), under the headers of its own answer just before (`like`)."""
        status, body = answer
        if hidden:
            exchange.filter.hidden += 1  # type: ignore[union-attr]
            exchange.outcome, exchange.reason = "deny", "not visible to this profile, or missing"
        headers = [(n, b"application/json" if n.lower() == b"content-type" else v)
                   for n, v in (like.headers.raw_items() if like is not None else ())
                   if n.lower() not in (b"content-length", b"transfer-encoding")]
        if not any(n.lower() == b"content-type" for n, _ in headers):
            headers.append((b"Content-Type", b"application/json"))
        headers.append((b"Content-Length", str(len(body)).encode()))
        exchange.transform = None
        exchange.send_head(h11.Response(status_code=status, reason=REASONS.get(status, b""),
                                        headers=headers, _parsed=True))
        exchange.send_body(body)
        exchange.end_body()

    def join_stream(self, exchange: Exchange, request: h11.Request | None = None) -> None:
        assert exchange.decision is not None
        if request is None:
            request = forwarded_request(exchange.facts.method, exchange.decision.target, exchange.facts.headers)
        key = exchange.decision.target.forward_form_text
        stream = self.shared_streams.get(key)
        if stream is not None:
            stream.join(exchange)
        else:
            SharedStream(key, self.pool, self.shared_streams, request, self.join_stream).open(exchange)

    def coalesce(self, exchange: Exchange, request: h11.Request) -> None:
        """A GET known to be finite: joins an identical one not yet sent, or the one to follow it."""
        key = (request.target, tuple(request.headers.raw_items()))  # what the daemon is asked
        read = self.coalesced.get(key)
        if read is not None:
            read.join(exchange)
            return
        read = CoalescedRead(key, self.pool, self.coalesced, request, self.loop)
        read.join(exchange)
        read.start()

    def exchange_done(self, exchange: Exchange) -> None:
        """Once per exchange: its answer was delivered, or its connection closed."""
        client, facts, decision = exchange.client, exchange.facts, exchange.decision
        if exchange.streaming:
            decrement(self.streams_per_client, client.identity)
        self.metrics.request_done(facts.profile, exchange.outcome, self.endpoint_label(decision),
                                  None if exchange.streaming else self.loop.clock() - exchange.started)
        if self.log.enabled("info"):
            filtered = {} if exchange.filter is None else {
                "redacted": exchange.filter.redacted, "hidden": exchange.filter.hidden}
            self.log("info", "request", listener=client.listener.url, client=client.peer,
                     method=facts.method, target=facts.target.decode("latin-1"),
                     path=decision.target.forward_form_text if decision else None,
                     profile=facts.profile, client_rule=exchange.client_rule,
                     decision=exchange.outcome,
                     rule=decision.rule.label if decision and decision.would_deny is None else None,
                     reason=exchange.reason, ended=exchange.ended or "complete",
                     status=exchange.status, bytes=exchange.delivered,
                     duration_ms=int((self.loop.clock() - exchange.started) * 1e6) / 1000,  # (round() formats a string)
                     **filtered)

    def rules_changed(self, clients: Iterable[ClientConnection], old: Policy) -> int:
        """`policy` was replaced (a reload): end each open stream the new policy would not
        decide and filter as the old one did (Rule 4). Returns how many were ended."""
        ended = 0
        for client in list(clients):
            exchange = client.exchange
            if exchange is None or not exchange.streaming or self.decided_alike(exchange, client.profile, old):
                continue
            exchange.end_stream("stream ended: the rules changed at reload",
                                "the rules changed at reload: ask again")
            ended += 1
        return ended

    def decided_alike(self, exchange: Exchange, profile: str, old: Policy) -> bool:
        facts, before = exchange.facts, exchange.decision
        if before is None or profile != facts.profile:
            return False
        if self.policy.filtering.get(profile, DEFAULT_FILTERING) != old.filtering.get(profile, DEFAULT_FILTERING):
            return False
        try:
            after = decide_with_mode(self.policy, facts, self.settings.allow_hosts, self.learning is not None)
        except Refusal:
            return False
        return rule_terms(after) == rule_terms(before)

    def endpoint_label(self, decision: Decision | None) -> str | None:
        """The metrics' endpoint label: the rule's path template; for a would_deny, the template
        learn mode would learn it as. Never a path a client chose (the series stay bounded by the
        rules and the API's own templates); None: no rule."""
        if decision is None:
            return None
        if decision.would_deny is None:
            return decision.rule.path
        return learn_template(self.policy, decision.target.segments)


def rule_terms(decision: Decision) -> tuple:
    """What a decision grants, whatever the rule's place in its profile: its template, methods,
    query, dangerous acknowledgement, and whether it is a would_deny."""
    rule = decision.rule
    query = None if rule.query is None else sorted(rule.query.items())
    return rule.path, rule.methods, query, rule.dangerous, decision.would_deny is None


def _headers(head: h11.Response | None) -> dict[str, str]:
    return {} if head is None else {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in head.headers.raw_items()}


def decrement(counts: dict[str, int], key: str) -> None:
    count = counts.get(key, 0) - 1
    if count > 0:
        counts[key] = count
    else:
        counts.pop(key, None)
