"""--doctor: an audit of the host porthole runs on.

Facts are gathered once (gather_host_facts: the only I/O, its paths injectable for tests), then
each check is a pure function of them returning findings. Severities: ok and info never change
the exit status; a warning makes it 1, a critical finding 2.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h11

from porthole.connections.upstream import upstream_error_message
from porthole.core.objects import DEFAULT_REDACTIONS, REDACTIONS
from porthole.core.filters import DEFAULT_FILTERING
from porthole.core.guards import REDACTED_READS, dangerous_overlaps, redacted_overlaps
from porthole.core.policy import Policy, Rule
from porthole.ops.probe import blocking_get
from porthole.runtime.config import Endpoint, Settings


SEVERITIES = ("ok", "info", "warning", "critical")
DEFAULT_DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


@dataclass(frozen=True)
class Finding:
    severity: str  # one of SEVERITIES
    check: str
    message: str


@dataclass(frozen=True)
class DoctorPaths:
    """Where the audit looks; PORTHOLE_DOCTOR_* override them (tests, or a host mounted elsewhere)."""

    proc: str = "/proc"
    daemon_json: str = "/etc/docker/daemon.json"  # when dockerd names no --config-file
    group: str = "/etc/group"
    passwd: str = "/etc/passwd"  # users whose primary group is the socket's are members too

    @staticmethod
    def from_environment(environ: Mapping[str, str]) -> DoctorPaths:
        return DoctorPaths(proc=environ.get("PORTHOLE_DOCTOR_PROC") or "/proc",
                           daemon_json=environ.get("PORTHOLE_DOCTOR_DAEMON_JSON") or "/etc/docker/daemon.json",
                           group=environ.get("PORTHOLE_DOCTOR_GROUP_FILE") or "/etc/group",
                           passwd=environ.get("PORTHOLE_DOCTOR_PASSWD_FILE") or "/etc/passwd")


@dataclass(frozen=True)
class SocketFacts:
    path: str
    mode: int | None = None  # None: could not stat it (see error)
    uid: int = -1
    gid: int = -1
    group_name: str | None = None
    group_members: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class DaemonFacts:
    """One dockerd process serving the upstream: its command line and configuration file merged."""

    pid: int
    hosts: tuple[str, ...]
    tls: bool = False
    tlsverify: bool = False
    userns_remap: str | None = None
    config_file: str = ""
    config_error: str | None = None


@dataclass(frozen=True)
class HostFacts:
    upstream: Endpoint
    socket: SocketFacts | None  # None: the upstream is TCP
    daemons: tuple[DaemonFacts, ...]
    dockerd_processes: int  # dockerd processes seen in /proc, serving the upstream or not
    proc_root: str
    security_options: tuple[str, ...] | None  # the daemon's /info SecurityOptions (None: not asked)
    daemon_error: str | None  # why porthole could not ask the daemon
    euid: int
    allow_root: bool
    listeners: tuple[Endpoint, ...]
    policy: Policy
    ssh_keys: tuple[SshKeyFacts, ...] = ()  # the socket group's members' authorized_keys


@dataclass(frozen=True)
class SshKeyFacts:
    """One authorized_keys file of a member of the socket's group: its keys without a forced
    command (command="..."), with one but with port forwarding left on (neither restrict nor
    no-port-forwarding: `ssh -L` reaches the socket, the forced command notwithstanding), with
    both, or why it could not be read."""

    user: str
    path: str
    unforced: int = 0
    forced: int = 0
    forwarding: int = 0
    error: str | None = None


_KEY_OPTIONS = re.compile(r'(?:[^\s"]|"(?:[^"\\]|\\.)*")*')  # an authorized_keys line's first field
_KEY_TYPE = re.compile(r"(ssh-|ecdsa-|sk-)")


def authorized_keys_facts(user: str, home: str) -> list[SshKeyFacts]:
    """Count the keys in HOME/.ssh/authorized_keys(2) that run a forced command and those that do
    not (sshd's default AuthorizedKeysFile; another one set in sshd_config is not read)."""
    found = []
    for name in ("authorized_keys", "authorized_keys2"):
        path = os.path.join(home, ".ssh", name)
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError as exc:
            found.append(SshKeyFacts(user, path, error=exc.strerror or str(exc)))
            continue
        forced = unforced = forwarding = 0
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            # (_KEY_OPTIONS matches "" too: never None)
            options = "" if _KEY_TYPE.match(line) else _KEY_OPTIONS.match(line).group(0)  # type: ignore[union-attr]
            if not re.search(r'(?:^|,)command="', options, re.IGNORECASE):
                unforced += 1
            elif (re.search(r"(?:^|,)(?:no-port-forwarding|restrict)(?:,|$)", options, re.IGNORECASE)
                  and not re.search(r"(?:^|,)port-forwarding(?:,|$)", options, re.IGNORECASE)):
                forced += 1
            else:
                forwarding += 1
        found.append(SshKeyFacts(user, path, unforced, forced, forwarding))
    return found


def ssh_key_facts(members: Sequence[str], passwd_file: str) -> tuple[SshKeyFacts, ...]:
    homes = {fields[0]: fields[5] for fields in _colon_file(passwd_file) if len(fields) >= 6}
    return tuple(facts for user in members if homes.get(user) for facts in authorized_keys_facts(user, homes[user]))


def _flag_value(argv: Sequence[str], i: int, names: Sequence[str]) -> tuple[str | None, int]:
    """(value, how many arguments it took) when argv[i] is one of the option `names`."""
    arg = argv[i]
    for name in names:
        if arg == name:
            return (argv[i + 1] if i + 1 < len(argv) else ""), 2
        if arg.startswith(name + "="):
            return arg[len(name) + 1:], 1
        if len(name) == 2 and arg.startswith(name) and len(arg) > 2:  # -Htcp://...
            return arg[2:], 1
    return None, 0


def _boolean_flag(argv: Sequence[str], name: str) -> bool | None:
    """--name or --name=true/false (the last one wins); None when absent."""
    value = None
    for arg in argv:
        if arg == name:
            value = True
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2].lower() in ("1", "true", "t")
    return value


def parse_dockerd_command_line(argv: Sequence[str]) -> dict[str, Any]:
    """The options of dockerd's command line the audit reads: hosts, tls, tlsverify,
    userns-remap, config-file."""
    found: dict[str, Any] = {"hosts": []}
    i = 1
    while i < len(argv):
        value, used = _flag_value(argv, i, ("-H", "--host"))
        if used:
            found["hosts"].append(value)
            i += used
            continue
        for option in ("--userns-remap", "--config-file"):
            value, used = _flag_value(argv, i, (option,))
            if used:
                found[option[2:]] = value
                break
        i += max(used, 1)
    for option in ("--tls", "--tlsverify"):
        value = _boolean_flag(argv, option)
        if value is not None:
            found[option[2:]] = value
    return found


def _same_unix_socket(host: str, path: str) -> bool:
    if not host.startswith("unix://"):
        return False
    given = host[len("unix://"):] or "/var/run/docker.sock"
    return given == path or (given in DEFAULT_DOCKER_SOCKETS and path in DEFAULT_DOCKER_SOCKETS) \
        or os.path.realpath(given) == os.path.realpath(path)


def daemon_serves(hosts: Sequence[str], upstream: Endpoint) -> bool:
    """Whether a dockerd with these hosts serves the upstream porthole connects to."""
    if upstream.kind == "tcp":
        return any(h.startswith("tcp://") and h.rsplit(":", 1)[-1].rstrip("/") == str(upstream.port) for h in hosts)
    if not hosts or any(h.startswith("fd://") for h in hosts):  # dockerd's default, or systemd's socket
        return upstream.path in DEFAULT_DOCKER_SOCKETS or os.path.realpath(upstream.path) == "/run/docker.sock"
    return any(_same_unix_socket(h, upstream.path) for h in hosts)


def read_daemon_config(path: str) -> tuple[dict[str, Any], str | None]:
    """daemon.json: ({} and None when absent; {} and why when unreadable or invalid)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {}, f"cannot read {path}: {exc}"
    if not isinstance(document, dict):
        return {}, f"{path} is not a JSON object"
    return document, None


def find_daemons(paths: DoctorPaths, upstream: Endpoint) -> tuple[list[DaemonFacts], int]:
    """The dockerd processes in paths.proc serving `upstream`, and how many dockerd there are."""
    daemons, seen = [], 0
    try:
        entries = sorted((e for e in os.listdir(paths.proc) if e.isdigit()), key=int)
    except OSError:
        return [], 0
    for entry in entries:
        try:
            argv = [a.decode("utf-8", "replace") for a in
                    Path(paths.proc, entry, "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "dockerd":
            continue
        seen += 1
        flags = parse_dockerd_command_line(argv)
        config_file = flags.get("config-file") or paths.daemon_json
        config, error = read_daemon_config(config_file)
        hosts = list(flags["hosts"]) or [h for h in config.get("hosts", []) if isinstance(h, str)]
        if not daemon_serves(hosts, upstream):
            continue
        userns = flags.get("userns-remap") or config.get("userns-remap") or None
        daemons.append(DaemonFacts(
            pid=int(entry), hosts=tuple(hosts),
            tls=bool(flags.get("tls", config.get("tls", False))),
            tlsverify=bool(flags.get("tlsverify", config.get("tlsverify", False))),
            userns_remap=userns if isinstance(userns, str) else None,
            config_file=config_file, config_error=error))
    return daemons, seen


def _colon_file(path: str) -> list[list[str]]:
    """The records of /etc/group or /etc/passwd ([] when unreadable)."""
    try:
        return [line.split(":") for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return []


def socket_facts(path: str, group_file: str, passwd_file: str = "/etc/passwd") -> SocketFacts:
    """The socket's owner and mode, its group's name and members: those /etc/group lists, then
    the users whose primary group it is (/etc/passwd)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return SocketFacts(path, error=exc.strerror or str(exc))
    gid, name, members = str(info.st_gid), None, []
    for fields in _colon_file(group_file):
        if len(fields) >= 4 and fields[2].strip() == gid:
            name, members = fields[0], [m for m in fields[3].strip().split(",") if m]
            break
    for fields in _colon_file(passwd_file):
        if len(fields) >= 4 and fields[3].strip() == gid and fields[0] not in members:
            members.append(fields[0])
    return SocketFacts(path, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, name, tuple(members))


def daemon_security_options(upstream: Endpoint) -> tuple[tuple[str, ...] | None, str | None]:
    """GET /info from the daemon: (its SecurityOptions, None), or (None, why not)."""
    try:
        with socket.socket(upstream.family, socket.SOCK_STREAM) as sock:
            sock.settimeout(15)  # a busy daemon answers /info slowly; --doctor can wait
            sock.connect(upstream.address)
            status, body = blocking_get(sock, "/info", "docker")
    except OSError as exc:
        return None, upstream_error_message(upstream, exc)
    except h11.ProtocolError as exc:
        return None, f"the daemon's answer to GET /info is not HTTP: {exc}"
    try:
        options = json.loads(body)["SecurityOptions"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        options = None
    if not isinstance(options, list):
        return None, f"GET /info answered {status} without SecurityOptions"
    return tuple(str(o) for o in options), None


def gather_host_facts(settings: Settings, policy: Policy, paths: DoctorPaths) -> HostFacts:
    upstream = settings.upstream
    daemons, seen = find_daemons(paths, upstream)
    options, error = daemon_security_options(upstream)
    sock = socket_facts(upstream.path, paths.group, paths.passwd) if upstream.kind == "unix" else None
    return HostFacts(
        upstream=upstream, socket=sock,
        daemons=tuple(daemons), dockerd_processes=seen, proc_root=paths.proc,
        security_options=options, daemon_error=error, euid=os.geteuid(), allow_root=settings.allow_root,
        listeners=settings.listeners, policy=policy,
        ssh_keys=ssh_key_facts(sock.group_members, paths.passwd) if sock is not None else ())


# The checks: pure functions of HostFacts.

def check_docker_socket(facts: HostFacts) -> list[Finding]:
    """Who can reach the daemon socket (connecting needs write permission): everyone with
    o+w is root on the host; so is every member of a group with g+w."""
    sock, name = facts.socket, "docker socket"
    if sock is None:
        return [Finding("critical", name, f"porthole reaches the daemon over TCP ({facts.upstream.url}): porthole "
                                          f"speaks no TLS upstream, so the daemon listens on TCP without it")]
    if sock.mode is None:
        return [Finding("warning", name, f"cannot stat {sock.path}: {sock.error}")]
    mode = f"{sock.path} (owner uid {sock.uid}, group {sock.group_name or sock.gid}, mode {sock.mode:04o})"
    if sock.mode & 0o002:  # everyone: its group no longer matters
        return [Finding("critical", name, f"{mode} is world-writable: every local user and every container "
                                          f"that mounts it is root on this host; chmod o-rw it")]
    if not sock.mode & 0o020:
        return [Finding("ok", name, f"{mode}: only its owner can use it")]
    if sock.group_members:
        return [Finding("warning", name, f"{mode}: members of group {sock.group_name} can use it directly, "
                                         f"bypassing porthole, and are root on this host: "
                                         f"{', '.join(sock.group_members)}")]
    return [Finding("ok", name, f"{mode}: its group has no listed members")]


def check_daemon_reachable(facts: HostFacts) -> list[Finding]:
    if facts.daemon_error is not None:
        return [Finding("warning", "daemon", f"porthole cannot ask the daemon: {facts.daemon_error}")]
    return [Finding("ok", "daemon", f"porthole reaches the daemon at {facts.upstream.url}")]


def check_daemon_tcp(facts: HostFacts) -> list[Finding]:
    """Docker Bench 2.6: a daemon on TCP without TLS client verification is root for whoever
    can reach the port, whatever porthole does."""
    name = "dockerd tcp"
    if not facts.daemons:
        seen = (f"{facts.dockerd_processes} dockerd process(es) in {facts.proc_root}, none serving "
                f"{facts.upstream.url}" if facts.dockerd_processes else
                f"no dockerd process in {facts.proc_root} (another PID namespace?)")
        return [Finding("info", name, f"{seen}: the daemon's own listeners were not checked; "
                                      f"run --doctor on the daemon's host")]
    findings = []
    for daemon in facts.daemons:
        if daemon.config_error:
            findings.append(Finding("warning", name, f"dockerd pid {daemon.pid}: {daemon.config_error}"))
        tcp = [h for h in daemon.hosts if h.startswith("tcp://")]
        if not tcp:
            findings.append(Finding("ok", name, f"dockerd pid {daemon.pid} listens on no TCP address "
                                                f"({', '.join(daemon.hosts) or 'its default socket'})"))
        elif not daemon.tlsverify:
            how = "TLS without client certificates" if daemon.tls else "no TLS"
            findings.append(Finding("critical", name, f"dockerd pid {daemon.pid} listens on {', '.join(tcp)} with "
                                                      f"{how}: whoever reaches the port is root on this host, "
                                                      f"bypassing porthole; remove the tcp:// host or set tlsverify"))
        else:
            findings.append(Finding("ok", name, f"dockerd pid {daemon.pid} listens on {', '.join(tcp)} "
                                                f"with TLS client verification"))
    return findings


def check_userns(facts: HostFacts) -> list[Finding]:
    """Docker Bench 2.8: with user-namespace remapping, root in a container is not root outside."""
    name = "userns-remap"
    options = facts.security_options or ()
    if any(o == "name=userns" or o.startswith("name=userns,") for o in options):
        return [Finding("ok", name, "the daemon remaps user namespaces (SecurityOptions name=userns)")]
    if any(o.startswith("name=rootless") for o in options):
        return [Finding("ok", name, "the daemon runs rootless")]
    configured = [d for d in facts.daemons if d.userns_remap]
    if configured:
        state = "but the daemon does not report it (restart dockerd?)" if facts.security_options is not None else ""
        return [Finding("info" if state else "ok", name,
                        f"dockerd pid {configured[0].pid} is configured with userns-remap "
                        f"{configured[0].userns_remap!r} {state}".rstrip())]
    return [Finding("info", name, "no user-namespace remapping: root in a container is root on the host "
                                  "(userns-remap in daemon.json, Docker Bench 2.8)")]


def check_root(facts: HostFacts) -> list[Finding]:
    if facts.euid == 0:
        return [Finding("warning", "porthole user",
                        "porthole runs as root" + (" (--allow-root)" if facts.allow_root else
                                                   ", which it refuses to serve as without --allow-root")
                        + ": run it as an unprivileged user with the socket's group")]
    return [Finding("ok", "porthole user", f"porthole runs as uid {facts.euid}, not root")]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _acknowledged(policy: Policy, profile: str) -> list[Rule]:
    return [rule for rule in policy.profiles.get(profile, ()) if rule.dangerous]


def check_listeners(facts: HostFacts) -> list[Finding]:
    """A TCP listener off loopback answers whoever reaches it: without TLS client certificates
    anyone there reads what the listener's profile allows (critical if that includes dangerous
    reads). `clients` entries only pick profiles: a client they do not match still gets the
    listener's own."""
    findings, name = [], "listeners"
    tcp_entries = [c for c in facts.policy.clients if c.network is not None or c.certified is not None]
    for endpoint in facts.listeners:
        dangerous = _acknowledged(facts.policy, endpoint.profile)
        if endpoint.kind == "unix":
            world = endpoint.mode is not None and endpoint.mode & 0o002
            findings.append(Finding("warning" if world and dangerous else "ok", name,
                                    f"{endpoint.url}: a unix socket" + (", world-writable, whose profile "
                                    f"{endpoint.profile!r} acknowledges dangerous reads" if world and dangerous else "")))
            continue
        if _is_loopback(endpoint.host):
            findings.append(Finding("ok", name, f"{endpoint.url}: loopback only"))
            continue
        if endpoint.tlscacert is not None:
            findings.append(Finding("ok", name, f"{endpoint.url}: mutual TLS (clients need a certificate "
                                                f"signed by {endpoint.tlscacert})"))
            continue
        how = "TLS without client certificates" if endpoint.tls else "no TLS"
        severity = "critical" if dangerous else "warning"
        what = (f"the dangerous reads profile {endpoint.profile!r} acknowledges "
                f"({', '.join(sorted({r.path for r in dangerous}))})" if dangerous
                else f"what profile {endpoint.profile!r} allows (container inspect shows environment variables)")
        note = (f"; the {len(tcp_entries)} TCP `clients` entries pick profiles, but a client they do not match "
                f"still gets {endpoint.profile!r}" if tcp_entries else "")
        findings.append(Finding(severity, name, f"{endpoint.url}: not loopback, {how}: whoever reaches it reads "
                                                f"{what}{note}; bind to 127.0.0.1 or a unix socket, or add tlscacert"))
    return findings


def check_dangerous_reads(facts: HostFacts) -> list[Finding]:
    """Which dangerous reads each profile acknowledges (the operator's choice, listed)."""
    findings = []
    used = {l.profile for l in facts.listeners}
    for profile, rules in sorted(facts.policy.profiles.items()):
        dangerous = [r for r in rules if r.dangerous]
        if dangerous:
            listed = "; ".join(f"{'|'.join(sorted(r.methods))} {r.path} ({dangerous_overlaps(r.template)[0]})"
                               for r in dangerous)
            findings.append(Finding("info", "dangerous reads", f"profile {profile!r}"
                                    + (" (a listener's)" if profile in used else "") + f" acknowledges: {listed}"))
    if not findings:
        findings.append(Finding("ok", "dangerous reads", "no profile acknowledges a dangerous read"))
    return findings


def check_redaction(facts: HostFacts) -> list[Finding]:
    """Which profiles hand out what redaction removes by default (environment values, log and
    volume driver options, exec command lines, config contents): a warning for a profile in use."""
    findings = []
    used = {l.profile for l in facts.listeners} | {c.profile for c in facts.policy.clients}
    for profile in sorted(facts.policy.profiles):
        filtering = facts.policy.filtering.get(profile, DEFAULT_FILTERING)
        # A REDACTED_READS redaction (swarm-tokens) matters only to a profile whose rules reach its path.
        reached = {redaction for rule in facts.policy.profiles[profile]
                   for redaction, _ in redacted_overlaps(rule.template)}
        guarded = {redaction for redaction, _ in REDACTED_READS.values()}
        missing = [r for r in REDACTIONS if r in DEFAULT_REDACTIONS and r not in filtering.redact
                   and (r not in guarded or r in reached)]
        if not missing:
            continue
        scope = f" (it sees only containers labelled {', '.join(filtering.label_filters())})" if filtering.visible else ""
        in_use = profile in used
        findings.append(Finding("warning" if in_use else "info", "redaction",
                                f"profile {profile!r}{' (in use)' if in_use else ''} does not redact "
                                f"{', '.join(missing)}: its clients read those values{scope}"))
    if not findings:
        findings.append(Finding("ok", "redaction", "every profile redacts "
                                + ", ".join(r for r in REDACTIONS if r in DEFAULT_REDACTIONS)))
    return findings


def check_ssh_keys(facts: HostFacts) -> list[Finding]:
    """A key of a member of the socket's group logs in with a shell that can use the socket: root
    on this host, unless its authorized_keys line forces a command (porthole --stdio)."""
    group = facts.socket.group_name if facts.socket is not None else None
    findings = []
    for keys in facts.ssh_keys:
        if keys.error is not None:
            findings.append(Finding("info", "ssh keys", f"{keys.path} ({keys.user}, group {group}): not read: "
                                                        f"{keys.error}; run --doctor as root to check it"))
        elif keys.unforced:
            findings.append(Finding("warning", "ssh keys", f"{keys.path}: {keys.unforced} key(s) of {keys.user}, "
                                    f"a member of group {group}, log in without a forced command: each can use the "
                                    f"docker socket directly (root on this host); force porthole --stdio on them "
                                    f"(docs/ssh.md)"))
        elif keys.forwarding:
            findings.append(Finding("warning", "ssh keys", f"{keys.path}: {keys.forwarding} key(s) of {keys.user}, "
                                    f"a member of group {group}, force a command but allow port forwarding: "
                                    f"ssh -L reaches the docker socket directly, unless sshd_config forbids it; "
                                    f"add restrict or no-port-forwarding (docs/ssh.md)"))
        elif keys.forced:
            findings.append(Finding("ok", "ssh keys", f"{keys.path}: each of {keys.user}'s {keys.forced} key(s) "
                                                      f"runs a forced command"))
    return findings


DOCTOR_CHECKS: tuple[Callable[[HostFacts], list[Finding]], ...] = (
    check_docker_socket, check_daemon_reachable, check_daemon_tcp, check_userns, check_root,
    check_listeners, check_dangerous_reads, check_redaction, check_ssh_keys)


def doctor_exit_status(findings: Sequence[Finding]) -> int:
    severities = {f.severity for f in findings}
    return 2 if "critical" in severities else 1 if "warning" in severities else 0


def format_findings(findings: Sequence[Finding], as_json: bool) -> str:
    status = doctor_exit_status(findings)
    counts = {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}
    if as_json:
        return json.dumps({"findings": [vars(f) for f in findings], "counts": counts, "exit": status})
    width = max(len(f.check) for f in findings)
    lines = [f"{'SEVERITY':<9} {'CHECK':<{width}}  FINDING"]
    lines += [f"{f.severity:<9} {f.check:<{width}}  {f.message}" for f in findings]
    lines.append(f"porthole --doctor: {counts['critical']} critical, {counts['warning']} warning(s), "
                 f"{counts['info']} info, {counts['ok']} ok; exit {status}")
    return "\n".join(lines)


def doctor(settings: Settings, policy: Policy, paths: DoctorPaths) -> int:
    facts = gather_host_facts(settings, policy, paths)
    findings = [finding for check in DOCTOR_CHECKS for finding in check(facts)]
    print(format_findings(findings, as_json=settings.log_format_given and settings.log_format == "json"))
    return doctor_exit_status(findings)
