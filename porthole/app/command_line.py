"""main: --version, --check, --healthcheck, --doctor, or run the proxy."""
from __future__ import annotations

import json
import os
import sys
from typing import Mapping, Sequence

import h11

from porthole import VERSION
from porthole.app.build_info import build_info
from porthole.app.healthcheck import healthcheck
from porthole.app.settings import parse_settings
from porthole.app.wiring import Proxy
from porthole.core.policy import PolicyError, describe_policy, load_policy
from porthole.ops.tecnativa import tecnativa_policy
from porthole.runtime.config import UsageError, rules_label
from porthole.runtime.log import Log, log_stream


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ)
    except UsageError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    if settings.mode == "version":
        commit, built = build_info()
        print(f"porthole {VERSION} (commit {commit}, built {built}; h11 {h11.__version__}, Python {sys.version.split()[0]})")
        return 0
    if settings.mode == "healthcheck":
        return healthcheck(settings)
    notes: tuple[str, ...] = ()
    try:
        if settings.dropin:
            dropin = tecnativa_policy(dict(settings.dropin))
            notes = dropin.notes
            policy = load_policy(json.dumps(dropin.document), "the Tecnativa-style environment variables")
        else:
            policy = load_policy(settings.rules_path.read_text(encoding="utf-8"), rules_label(settings.rules_path))
    except (OSError, UnicodeDecodeError) as exc:
        print(f"porthole: {rules_label(settings.rules_path)}: cannot read: {exc}", file=sys.stderr)
        return 2
    except (PolicyError, UsageError) as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    if settings.mode == "check":
        print(describe_policy(policy))
        for note in notes:
            print(f"note: {note}")
        return 0
    if settings.mode == "doctor":
        from porthole.ops.doctor import DoctorPaths, doctor  # (a one-shot mode: kept out of every start)
        return doctor(settings, policy, DoctorPaths.from_environment(os.environ if environ is None else environ))
    if os.geteuid() == 0 and not settings.allow_root:
        print("porthole: refusing to run as root. Run it as an unprivileged user that has the Docker "
              "socket's group, e.g. docker run --user 65532:65532 --group-add $(stat -c %g "
              "/var/run/docker.sock) ..., or setpriv --reuid 65532 --regid 65532 "
              "--groups <socket gid>. Pass --allow-root to override.", file=sys.stderr)
        return 2
    try:
        log = Log(settings.log_format, settings.log_level, log_stream(settings.log_file, settings.stdio is not None))
    except OSError as exc:
        print(f"porthole: --log-file {settings.log_file}: cannot open: {exc.strerror}", file=sys.stderr)
        return 2
    log("info", "policy_source", rules=policy.source, why=settings.policy_reason)
    for note in notes:
        log("warning", "dropin_left_out", note=note)
    if settings.stdio is not None:
        from porthole.app.session import StdioProxy  # (only a --stdio session needs it)
        proxy: Proxy = StdioProxy(settings, policy, log, os.environ if environ is None else environ)
    else:
        proxy = Proxy(settings, policy, log)
    try:
        proxy.bind()
    except UsageError as exc:
        print(f"porthole: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # whatever else start-up meets: one line, never a traceback
        print(f"porthole: cannot start: {exc.strerror or exc}"
              + (f" ({exc.filename})" if exc.filename else ""), file=sys.stderr)
        return 2
    return proxy.run()
