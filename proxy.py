#!/usr/bin/env python3
"""Porthole: a read-only proxy for the Docker Engine API. The entry point: the code is in porthole/."""
from __future__ import annotations

import sys

from porthole import (  # noqa: F401  (re-exported while the tests move to the package)
    VERSION,
)
from porthole.app.command_line import (  # noqa: F401  (re-exported while the tests move to the package)
    main,
)
from porthole.app.dispatch import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_CACHED_DECISIONS, Dispatch, decrement,
)
from porthole.app.healthcheck import (  # noqa: F401  (re-exported while the tests move to the package)
    healthcheck_tls, init_process_listener, _is_this_program, healthcheck,
)
from porthole.app.settings import (  # noqa: F401  (re-exported while the tests move to the package)
    _NUMERIC_OPTIONS, _TRUE, parse_settings,
)
from porthole.app.wiring import (  # noqa: F401  (re-exported while the tests move to the package)
    REJECT_SLACK, Proxy,
)
from porthole.connections.client import (  # noqa: F401  (re-exported while the tests move to the package)
    CLIENT_HIGH_WATER, CLIENT_LOW_WATER, LINGER_SECONDS, REQUESTS_PER_TURN, ClientState, CLIENT_TRANSITIONS,
    client_deadline, ClientConnection,
)
from porthole.connections.exchange import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_REFUSALS_IN_A_ROW, Exchange, OutputQueue,
)
from porthole.connections.listeners import (  # noqa: F401  (re-exported while the tests move to the package)
    ACCEPTS_PER_TURN, ACCEPT_BACKOFF_SECONDS, FileIdentity, Listener, bind, bind_tcp,
    bind_unix, _replace_if_stale,
)
from porthole.connections.pool import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_IDLE_UPSTREAMS, UpstreamPool, _is_ip_literal,
)
from porthole.connections.sources import (  # noqa: F401  (re-exported while the tests move to the package)
    Relay, Lookup, SharedStream, CoalescedRead,
)
from porthole.connections.upstream import (  # noqa: F401  (re-exported while the tests move to the package)
    POOL_IDLE_SECONDS, upstream_error_message, UpstreamState, UPSTREAM_TRANSITIONS, UpstreamConnection,
)
from porthole.core.clients import (  # noqa: F401  (re-exported while the tests move to the package)
    UNIX_CONDITIONS, TCP_CONDITIONS, _MAX_ID, IPNetwork, IPAddress, ClientFacts,
    peer_address, ClientRule, choose_profile, shadowing_entries, load_client_rules,
)
from porthole.core.decide import (  # noqa: F401  (re-exported while the tests move to the package)
    WOULD_DENY_PATH, FORWARDED_REQUEST_HEADERS, RequestFacts, Decision, _IPV4, _HOST_SYNTAX,
    host_is_acceptable, is_truthy, is_shareable, is_streaming, decide, decide_with_mode,
    NotReadOnly, forwarded_request,
)
from porthole.core.filters import (  # noqa: F401  (re-exported while the tests move to the package)
    REDACTIONS, DEFAULT_REDACTIONS, Label, Filtering, parse_label_filter, labels_match,
    ObjectHidden, _object, _array, _at, ResponseFilter, classify_for_filter,
    _REDACTIONS_FOR, _SCOPED, FilterPlan, plan_response_filter, DEFAULT_FILTERING, MAX_EVENT_BYTES,
    MAX_SHARED_EVENTS, MAX_SHARED_EVENT_BYTES, _FILTERED_EVENTS, filter_transform, with_label_filters, resolved_object,
    _visible_object,
)
from porthole.core.guards import (  # noqa: F401  (re-exported while the tests move to the package)
    ONE, MANY, Template, _TEMPLATE_VAR, parse_template, template_matches,
    templates_overlap, NEVER_FORWARDED, DANGEROUS_READS, TemplateIndex, NEVER_TEMPLATES, DANGEROUS_TEMPLATES,
    _NEVER_INDEX, _DANGEROUS_INDEX, never_forwarded_reason, dangerous_reason, dangerous_overlaps,
)
from porthole.core.policy import (  # noqa: F401  (re-exported while the tests move to the package)
    Rule, Policy, PolicyError, ALLOWED_METHODS, PROFILE_MODES, _PROFILE_NAME,
    load_policy, _first_null, _load_filtering, _load_rule, describe_policy,
)
from porthole.core.rewrite import (  # noqa: F401  (re-exported while the tests move to the package)
    TransformError, ResponseTransform, event_bytes, ResponseRewriter,
)
from porthole.core.target import (  # noqa: F401  (re-exported while the tests move to the package)
    Refusal, SAFE_SEGMENT, QUERY_KEY, API_VERSION, _VERSION_LIKE, _HEX,
    _percent_decode, Target, canonicalize_target, CONTROL_BYTES,
)
from porthole.core.wire import (  # noqa: F401  (re-exported while the tests move to the package)
    READ_CHUNK, MAX_REMEMBERED_HEADS, MAX_REMEMBERED_REQUEST_HEAD, kept_for, RequestReader, _declares_body,
    connection_tokens, client_keeps_alive, END_OF_MESSAGE, request_bytes, _WRITTEN_REQUESTS, _request_bytes,
    UPSTREAM_MAX_HEAD, MAX_INFORMATIONAL, DaemonAnswerError, AnswerParser, _HOP_BY_HOP, has_both_framings,
    relayed_response_headers, relayed_head, _CHUNK_SIZE, MAX_CHUNK_LINE, BodyFraming, body_framing,
    ParsedHead, error_body, FramingError, BodyWriter, response_head, _WRITTEN_HEADS,
    response_head_parts,
)
from porthole.ops.doctor import (  # noqa: F401  (re-exported while the tests move to the package)
    SEVERITIES, DEFAULT_DOCKER_SOCKETS, Finding, DoctorPaths, SocketFacts, DaemonFacts,
    HostFacts, _flag_value, _boolean_flag, parse_dockerd_command_line, _same_unix_socket, daemon_serves,
    read_daemon_config, find_daemons, _colon_file, socket_facts, daemon_security_options, gather_host_facts,
    check_docker_socket, check_daemon_reachable, check_daemon_tcp, check_userns, check_root, _is_loopback,
    _acknowledged, check_listeners, check_dangerous_reads, check_redaction, DOCTOR_CHECKS, doctor_exit_status,
    format_findings, doctor,
)
from porthole.ops.learn import (  # noqa: F401  (re-exported while the tests move to the package)
    ENGINE_API_TEMPLATES, _ENGINE_API_INDEX, LEARN_VALUE_KEYS, LEARN_MAX_VALUES, LEARN_MAX_KEYS, LEARN_MAX_CLIENTS,
    _LEARN_KINDS, LearnedClient, learned_client, LearnedUse, learn_template, Learner,
    LEARN_WRITE_SECONDS, LearnFile,
)
from porthole.ops.metrics_server import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_METRICS_CONNECTIONS, METRICS_PATH, MetricsServer,
)
from porthole.ops.probe import (  # noqa: F401  (re-exported while the tests move to the package)
    blocking_get,
)
from porthole.ops.reload import (  # noqa: F401  (re-exported while the tests move to the package)
    RulesWatcher,
)
from porthole.ops.tecnativa import (  # noqa: F401  (re-exported while the tests move to the package)
    SectionRead, TECNATIVA_SECTIONS, TECNATIVA_DEFAULTS_ON, TECNATIVA_GATES, TECNATIVA_WRITES, TECNATIVA_SETTINGS,
    TECNATIVA_VARIABLES, _HAPROXY_LOG_LEVELS, dropin_variables, tecnativa_flag, tecnativa_log_level, tecnativa_upstream,
    DropIn, tecnativa_policy,
)
from porthole.runtime.config import (  # noqa: F401  (re-exported while the tests move to the package)
    DEFAULT_LISTEN, DEFAULT_UPSTREAM, UsageError, Endpoint, parse_endpoint, TLS_OPTIONS,
    parse_metrics_endpoint, Settings, default_rules_path, rules_label,
)
from porthole.runtime.log import (  # noqa: F401  (re-exported while the tests move to the package)
    LOG_LEVELS, _JSON_LINE, _TEXT_SAFE, Log,
)
from porthole.runtime.loop import (  # noqa: F401  (re-exported while the tests move to the package)
    StateError, illegal_transition, set_interest, Loop, SignalPipe, Timer,
)
from porthole.runtime.metrics import (  # noqa: F401  (re-exported while the tests move to the package)
    UPSTREAM_ERROR_REASONS, RELOAD_RESULTS, NO_RULE, DURATION_BUCKETS, METRICS_CONTENT_TYPE, escape_label_value,
    _labels, _number, Metrics,
)
from porthole.runtime.tls import (  # noqa: F401  (re-exported while the tests move to the package)
    TLS_RECORD, TlsError, _TLS_REASONS, tls_failure_reason, certificate_cn, TlsState,
    TLS_TRANSITIONS, PlainTransport, TlsTransport, TlsConfigError, tls_server_context,
)

if __name__ == "__main__":
    sys.exit(main())
