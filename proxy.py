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
from porthole.app.healthcheck import (  # noqa: F401  (re-exported while the tests move to the package)
    _is_this_program, healthcheck, healthcheck_tls, init_process_listener,
)
from porthole.app.settings import (  # noqa: F401  (re-exported while the tests move to the package)
    _NUMERIC_OPTIONS, _TRUE, parse_settings,
)
from porthole.app.wiring import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_CACHED_DECISIONS, Proxy, REJECT_SLACK, _decrement,
)
from porthole.connections.client import (  # noqa: F401  (re-exported while the tests move to the package)
    CLIENT_HIGH_WATER, CLIENT_LOW_WATER, CLIENT_TRANSITIONS, ClientConnection, ClientState, LINGER_SECONDS,
    REQUESTS_PER_TURN, _C, client_deadline,
)
from porthole.connections.exchange import (  # noqa: F401  (re-exported while the tests move to the package)
    Exchange, MAX_REFUSALS_IN_A_ROW, OutputQueue,
)
from porthole.connections.listeners import (  # noqa: F401  (re-exported while the tests move to the package)
    ACCEPTS_PER_TURN, ACCEPT_BACKOFF_SECONDS, Listener, bind_tcp, bind_unix,
)
from porthole.connections.pool import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_IDLE_UPSTREAMS, UpstreamPool, _is_ip_literal,
)
from porthole.connections.sources import (  # noqa: F401  (re-exported while the tests move to the package)
    CoalescedRead, Lookup, Relay, SharedStream,
)
from porthole.connections.upstream import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_INFORMATIONAL, POOL_IDLE_SECONDS, UPSTREAM_MAX_HEAD, UPSTREAM_TRANSITIONS, UpstreamConnection, UpstreamState,
    _U, upstream_error_message,
)
from porthole.core.clients import (  # noqa: F401  (re-exported while the tests move to the package)
    ClientFacts, ClientRule, IPAddress, IPNetwork, TCP_CONDITIONS, UNIX_CONDITIONS,
    _MAX_ID, choose_profile, load_client_rules, peer_address, shadowing_entries,
)
from porthole.core.decide import (  # noqa: F401  (re-exported while the tests move to the package)
    Decision, FORWARDED_REQUEST_HEADERS, RequestFacts, _HOST_SYNTAX, _IPV4, decide,
    decide_with_mode, forwarded_request, host_is_acceptable, is_shareable, is_streaming, is_truthy,
)
from porthole.core.filters import (  # noqa: F401  (re-exported while the tests move to the package)
    DEFAULT_FILTERING, DEFAULT_REDACTIONS, FilterPlan, Filtering, Label, MAX_EVENT_BYTES,
    MAX_SHARED_EVENTS, MAX_SHARED_EVENT_BYTES, ObjectHidden, REDACTIONS, ResponseFilter, _FILTERED_EVENTS,
    _REDACTIONS_FOR, _SCOPED, _array, _at, _object, _visible_object,
    classify_for_filter, filter_transform, labels_match, parse_label_filter, plan_response_filter, resolved_object,
    with_label_filters,
)
from porthole.core.guards import (  # noqa: F401  (re-exported while the tests move to the package)
    DANGEROUS_READS, DANGEROUS_TEMPLATES, MANY, NEVER_FORWARDED, NEVER_TEMPLATES, ONE,
    Template, TemplateIndex, _DANGEROUS_INDEX, _NEVER_INDEX, _TEMPLATE_VAR, dangerous_overlaps,
    dangerous_reason, never_forwarded_reason, parse_template, template_matches, templates_overlap,
)
from porthole.core.policy import (  # noqa: F401  (re-exported while the tests move to the package)
    ALLOWED_METHODS, PROFILE_MODES, Policy, PolicyError, Rule, _PROFILE_NAME,
    _load_filtering, _load_rule, describe_policy, load_policy,
)
from porthole.core.rewrite import (  # noqa: F401  (re-exported while the tests move to the package)
    ResponseRewriter, ResponseTransform, TransformError, event_bytes,
)
from porthole.core.target import (  # noqa: F401  (re-exported while the tests move to the package)
    API_VERSION, CONTROL_BYTES, QUERY_KEY, Refusal, SAFE_SEGMENT, Target,
    _HEX, _VERSION_LIKE, _percent_decode, canonicalize_target,
)
from porthole.core.wire import (  # noqa: F401  (re-exported while the tests move to the package)
    BodyFraming, BodyWriter, END_OF_MESSAGE, FramingError, MAX_CHUNK_LINE, MAX_REMEMBERED_HEADS,
    MAX_REMEMBERED_REQUEST_HEAD, ParsedHead, READ_CHUNK, RequestReader, _CHUNK_SIZE, _HOP_BY_HOP,
    _WRITTEN_HEADS, _WRITTEN_REQUESTS, _declares_body, _request_bytes, body_framing, client_keeps_alive,
    connection_tokens, error_body, has_both_framings, kept_for, relayed_head, relayed_response_headers,
    request_bytes, response_head, response_head_parts,
)
from porthole.ops.doctor import (  # noqa: F401  (re-exported while the tests move to the package)
    DEFAULT_DOCKER_SOCKETS, DOCTOR_CHECKS, DaemonFacts, DoctorPaths, Finding, HostFacts,
    SEVERITIES, SocketFacts, _acknowledged, _boolean_flag, _colon_file, _flag_value,
    _is_loopback, _same_unix_socket, check_daemon_reachable, check_daemon_tcp, check_dangerous_reads, check_docker_socket,
    check_listeners, check_redaction, check_root, check_userns, daemon_security_options, daemon_serves,
    doctor, doctor_exit_status, find_daemons, format_findings, gather_host_facts, parse_dockerd_command_line,
    read_daemon_config, socket_facts,
)
from porthole.ops.learn import (  # noqa: F401  (re-exported while the tests move to the package)
    ENGINE_API_TEMPLATES, LEARN_MAX_CLIENTS, LEARN_MAX_KEYS, LEARN_MAX_VALUES, LEARN_VALUE_KEYS, LEARN_WRITE_SECONDS,
    LearnFile, LearnedClient, LearnedUse, Learner, _ENGINE_API_INDEX, _LEARN_KINDS,
    learn_template, learned_client,
)
from porthole.ops.metrics_server import (  # noqa: F401  (re-exported while the tests move to the package)
    MAX_METRICS_CONNECTIONS, METRICS_PATH, MetricsServer,
)
from porthole.ops.probe import (  # noqa: F401  (re-exported while the tests move to the package)
    blocking_get,
)
from porthole.ops.reload import (  # noqa: F401  (re-exported while the tests move to the package)
    FileIdentity, RulesWatcher,
)
from porthole.ops.tecnativa import (  # noqa: F401  (re-exported while the tests move to the package)
    DropIn, SectionRead, TECNATIVA_DEFAULTS_ON, TECNATIVA_GATES, TECNATIVA_SECTIONS, TECNATIVA_SETTINGS,
    TECNATIVA_VARIABLES, TECNATIVA_WRITES, _HAPROXY_LOG_LEVELS, _S, tecnativa_flag, tecnativa_log_level,
    tecnativa_policy, tecnativa_upstream,
)
from porthole.runtime.config import (  # noqa: F401  (re-exported while the tests move to the package)
    DEFAULT_LISTEN, DEFAULT_UPSTREAM, Endpoint, Settings, TLS_OPTIONS, UsageError,
    default_rules_path, parse_endpoint, parse_metrics_endpoint, rules_label,
)
from porthole.runtime.log import (  # noqa: F401  (re-exported while the tests move to the package)
    LOG_LEVELS, Log, _JSON_LINE, _TEXT_SAFE,
)
from porthole.runtime.loop import (  # noqa: F401  (re-exported while the tests move to the package)
    Loop, SignalPipe, StateError, Timer, illegal_transition, set_interest,
)
from porthole.runtime.metrics import (  # noqa: F401  (re-exported while the tests move to the package)
    DURATION_BUCKETS, METRICS_CONTENT_TYPE, Metrics, NO_RULE, RELOAD_RESULTS, UPSTREAM_ERROR_REASONS,
    _labels, _number, escape_label_value,
)
from porthole.runtime.tls import (  # noqa: F401  (re-exported while the tests move to the package)
    PlainTransport, TLS_RECORD, TLS_TRANSITIONS, TlsConfigError, TlsError, TlsState,
    TlsTransport, _T, _TLS_REASONS, certificate_cn, tls_failure_reason, tls_server_context,
)

if __name__ == "__main__":
    sys.exit(main())
