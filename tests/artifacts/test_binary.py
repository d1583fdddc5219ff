"""The frozen executable dist/porthole (./build.sh): fully static, runs as an unprivileged
user on a bare host and inside an otherwise empty root, and builds reproducibly.

The `porthole_binary` fixture (tests/artifacts/conftest.py, artifacts.ensure_binary) runs
`./build.sh` once per session unless dist/porthole is newer than everything it is built from (the
same rule as build.sh's binary_is_fresh)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

import fake_upstream as fu
import support
from artifacts import BUILD_INPUTS, REPO, SOCK_GID, check_cli_through, proxy_version, tail

pytestmark = pytest.mark.timeout(240)


def child_pids(pid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


# --------------------------------------------------------------------------
# the file itself


def test_statically_linked(porthole_binary):
    def readelf(flag):
        return subprocess.run(["readelf", flag, str(porthole_binary)], capture_output=True, text=True,
                              check=True).stdout

    headers = readelf("-lW")
    assert "Program Headers:" in headers
    assert "INTERP" not in headers, headers
    dynamic = readelf("-dW")
    assert "NEEDED" not in dynamic, dynamic


def test_sha256_file_matches(porthole_binary):
    recorded = (porthole_binary.parent / "porthole.sha256").read_text().split()
    assert recorded[1:] == ["porthole"], recorded
    assert recorded[0] == hashlib.sha256(porthole_binary.read_bytes()).hexdigest()


def test_version(porthole_binary):
    r = support.ProxyProcess(args=["--version"], proxy_path=porthole_binary, as_root=True, rules=False).run(30)
    assert r.returncode == 0, r.stderr
    # the commit it was built from (HEAD's, or an ancestor's when only files it is not built from
    # changed since) and the day of SOURCE_DATE_EPOCH, build.sh's default: that commit's time
    named = re.match(r"porthole %s \(commit ([0-9a-f]{12}), built (\d{4}-\d\d-\d\d); h11 " % re.escape(proxy_version()),
                     r.stdout)
    assert named, r.stdout
    commit, built = named.groups()
    git = functools.partial(subprocess.run, cwd=REPO, capture_output=True, text=True)
    assert git(["git", "merge-base", "--is-ancestor", commit, "HEAD"]).returncode == 0, (commit, r.stdout)
    when = git(["git", "log", "-1", "--format=%ct", commit], check=True).stdout
    assert built == time.strftime("%Y-%m-%d", time.gmtime(int(when)))


def test_no_hook_of_pyinstallers_for_inspect_runs_at_each_start(porthole_binary):
    """PyInstaller's run-time hook for inspect (it imports inspect and zipfile and reads
    base_library.zip's index) ran at every start, every --healthcheck too, and was most of a
    probe's CPU: build.sh freezes an empty one in its place (issue "(3 of 5)", item 1). (The
    archive's table of contents is stored uncompressed, inside staticx's uncompressed archive.)"""
    data = porthole_binary.read_bytes()
    assert b"pyi_rth_porthole_inspect" in data
    assert b"pyi_rth_inspect" not in data


def test_healthcheck_exits_1_in_one_line_when_nothing_listens(porthole_binary):
    port = support.free_port()
    r = support.ProxyProcess(args=["--healthcheck", "--listen", "tcp://127.0.0.1:%d" % port],
                             proxy_path=porthole_binary, rules=False).run(30)
    assert r.returncode == 1
    assert r.stderr.strip() == "porthole healthcheck: tcp://127.0.0.1:%d: [Errno 111] Connection refused" % port


# --------------------------------------------------------------------------
# running it


@pytest.mark.docker
def test_bare_host_unprivileged(porthole_binary, dockerd, busybox_image, containers):
    """Copied to a fresh 0755 directory (ProxyProcess's workdir), run as uid 65532 with only the
    socket's group."""
    name = "ph-bin-%d" % os.getpid()
    containers(busybox_image, name=name, start=False)

    port = support.free_port()
    # its bundled rules (no --rules); setpriv --groups replaces every supplementary group
    p = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % port], upstream=dockerd.url, groups=[SOCK_GID],
                             proxy_path=porthole_binary, rules=False)
    with p.running(ready_timeout=20):  # then: SIGTERM, exit 0 within 15 s
        status = open("/proc/%d/status" % p.pid).read()
        assert "\nUid:\t65532\t65532\t65532\t65532\n" in status
        check_cli_through("tcp://127.0.0.1:%d" % port, dockerd.url, name, busybox_image)


@pytest.mark.docker
def test_empty_root(porthole_binary, dockerd, busybox_image, containers):
    """A root holding only the binary, an empty tmp/, proc/ and the daemon socket.

    staticx's bootloader finds its own archive through /proc/self/exe, so the root needs a
    mounted /proc; the unpacked program lands in $TMPDIR (tmp/, 1777, exec allowed)."""
    root = support.short_tmpdir("ph-root-", 0o755)
    shutil.copy2(porthole_binary, root / "porthole")
    os.chmod(root / "porthole", 0o555)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "proc").mkdir(mode=0o555)
    (root / "docker.sock").touch(mode=0o644)  # mount point for the daemon socket
    name = "ph-root-%d" % os.getpid()
    containers(busybox_image, name=name, start=False)

    port = support.free_port()
    # New mount namespace (private propagation: nothing leaks to the host) and PID namespace:
    # when its init (the proxy) dies, the namespaces and their mounts go away with it.
    script = ('set -e; mount --bind "$1" "$2/docker.sock"; mount -t proc proc "$2/proc"; root="$2"; shift 2; '
              'exec chroot --userspec=%d:%d --groups=%d "$root" /porthole "$@"'
              % (support.PROXY_UID, support.PROXY_GID, SOCK_GID))
    launcher = ["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                "sh", "-c", script, "sh", dockerd.socket_path, str(root)]
    p = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % port], upstream="unix:///docker.sock", rules=False,
                             command=launcher, env={"TMPDIR": "/tmp"})
    try:
        p.start().wait_ready(20)
        check_cli_through("tcp://127.0.0.1:%d" % port, dockerd.url, name, busybox_image)
        # SIGTERM to the namespace's init (the staticx bootloader, unshare's only child), as
        # `docker stop` does; its bootloaders forward it to python. (Not to the whole process
        # group: then every process of the bootloader chain gets it and also forwards it, and a
        # late duplicate can kill a process that is already exiting.)
        init = child_pids(p.pid)
        assert len(init) == 1, init
        os.kill(init[0], signal.SIGTERM)
        rc = p.wait(15)
        assert rc == 0, "exit %s after SIGTERM:\n%s" % (rc, tail(p.stderr_text()))
    finally:
        p.cleanup()
    # nothing stayed mounted on the host
    with open("/proc/self/mountinfo") as f:
        assert str(root) not in f.read()


# --------------------------------------------------------------------------
# signals to the PID the user started (the staticx bootloader), and the systemd unit


def unit_directive(name: str) -> str:
    """A directive of examples/porthole.service, continuation lines joined."""
    text = (REPO / "examples" / "porthole.service").read_text().replace("\\\n", " ")
    values = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(name + "=")]
    assert len(values) == 1, (name, values)
    return values[0]


def reloads(p) -> list:
    return [line for line in p.logs() if line.get("event") == "reload"]


def test_sighup_to_the_started_pid_reloads(porthole_binary, upstream):
    """kill -HUP to the PID the user started (what `systemctl reload` does with the shipped
    unit's ExecReload, $MAINPID being that PID) reloads the rules; the process tree stays; SIGTERM
    to it stops everything and leaves nothing in TMPDIR. Upstream staticx let SIGHUP kill its
    bootloader, orphaning the proxy with its old policy."""
    tmpdir = support.short_tmpdir("ph-bin-tmp-", 0o777)
    os.chmod(tmpdir, 0o1777)
    rules = support.write_rules({"version": 1, "profiles": {"default": {"rules": [
        {"method": "GET", "path": "/_ping"}]}}})
    port = support.free_port()
    p = support.ProxyProcess(listen=["tcp://127.0.0.1:%d" % port], upstream=upstream.url, proxy_path=porthole_binary,
                             rules=rules, args=["--watch-rules", "0"], env={"TMPDIR": str(tmpdir)})
    with p.running(ready_timeout=20):
        address = ("127.0.0.1", port)
        assert fu.get(address, "/v1.41/version").status == 403
        tree = [p.pid] + child_pids(p.pid)
        assert len(tree) == 2, tree  # the bootloaders: staticx's, then PyInstaller's (and python)
        with open(str(p.rules_path) + ".new", "w") as f:
            f.write(json.dumps({"version": 1, "profiles": {"default": {"rules": [
                {"method": "GET", "path": "/_ping"}, {"method": "GET", "path": "/version"}]}}}))
        os.chmod(str(p.rules_path) + ".new", 0o644)
        os.replace(str(p.rules_path) + ".new", p.rules_path)
        os.kill(p.pid, signal.SIGHUP)
        assert support.wait_until(lambda: len(reloads(p)) == 1, 10), p.stderr_text()
        assert p.alive() and [p.pid] + child_pids(p.pid) == tree
        assert fu.get(address, "/v1.41/version").status == 200

        # the unit's ExecReload, run as systemd would with $MAINPID = the PID it started
        reload_line = unit_directive("ExecReload").replace("$MAINPID", str(p.pid)).split()
        subprocess.run(reload_line, check=True, timeout=10)
        assert support.wait_until(lambda: len(reloads(p)) == 2, 10), p.stderr_text()
        assert p.alive() and [p.pid] + child_pids(p.pid) == tree
    # running() sent SIGTERM to p.pid and saw exit 0; the bootloaders cleaned up after themselves
    assert list(tmpdir.iterdir()) == []


def test_builtin_rules_named_by_the_program(porthole_binary):
    """The rules bundled into the executable are named by the executable's path, not by the
    temporary directory they are unpacked to."""
    r = subprocess.run([str(porthole_binary), "--check"], capture_output=True, text=True, timeout=60,
                       cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first == "policy from %s (its built-in rules.json)" % porthole_binary.resolve(), first
    assert "_MEI" not in r.stdout + r.stderr


def test_stdio_session(porthole_binary, upstream):
    """--stdio in the executable: the answers, and only they, on stdout; nothing on stderr (it
    would reach the SSH client); a request refused; exit 0 at stdin's end."""
    request = (b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
               b"POST /containers/create HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n")
    r = subprocess.run([str(porthole_binary), "--stdio", "--allow-root", "--upstream", upstream.url], input=request,
                       capture_output=True, timeout=60, cwd="/", env={"PATH": "/usr/bin:/bin"})
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 403 " in r.stdout, r.stdout
    assert b'"porthole: method POST is never forwarded' in r.stdout
    assert [req.method for req in upstream.requests] == ["GET"]


# --------------------------------------------------------------------------
# ./build.sh run


def test_build_sh_run_with_arguments_keeps_the_socket_and_leaves_no_directory(porthole_binary, upstream):
    """`./build.sh run ARGS` as root: PORTHOLE_SOCKET stays the upstream when arguments are
    given (they used to replace it with the proxy's default), the proxy runs as 65532 with the
    socket's group, and no staging directory is left behind (one per run used to be)."""
    before = set(os.listdir("/tmp"))
    port = support.free_port()
    p = support.ProxyProcess(command=[str(REPO / "build.sh"), "run", "--listen", "tcp://127.0.0.1:%d" % port,
                                      "--log-format", "json"],
                             rules=False, env={"PORTHOLE_SOCKET": upstream.path})
    with p.running(ready_timeout=60):
        r = fu.get(("127.0.0.1", port), "/v1.41/version")
        assert r.status == 200, (r.status, r.body, p.stderr_text())
        assert [q.path for q in upstream.requests][-1:] == ["/version"]
        listening = next(l for l in p.logs() if l.get("event") == "listening")
        assert listening["upstream"] == upstream.url, listening
        status = open("/proc/%d/status" % p.pid).read()
        assert "\nUid:\t65532\t65532\t65532\t65532\n" in status
    left = sorted(n for n in set(os.listdir("/tmp")) - before if n.startswith("porthole-run"))
    assert left == [], left


# --------------------------------------------------------------------------
# reproducibility


def test_reproducible_build(porthole_binary):
    """Two builds from copies at different paths, with the same SOURCE_DATE_EPOCH, are
    byte-identical. Run side by side, each with its own PyInstaller cache (--clean wipes it)."""
    epoch = "1700000000"
    copies = [support.short_tmpdir("ph-repro-a-"), support.short_tmpdir("ph-repro-bbbbbbbb-") / "deeper" / "src"]
    procs = []
    for copy in copies:
        copy.mkdir(parents=True, exist_ok=True)
        for name in BUILD_INPUTS:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
        # reuse the repo's build venv (its install stamp says it is up to date)
        if (REPO / ".venv-build" / "bin" / "python").exists():
            (copy / ".venv-build").symlink_to(REPO / ".venv-build")
        env = dict(os.environ, SOURCE_DATE_EPOCH=epoch, PYINSTALLER_CONFIG_DIR=str(copy / ".pyinstaller"),
                   TMPDIR=str(copy))
        procs.append(subprocess.Popen(["./build.sh"], cwd=copy, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    try:
        outputs = [p.communicate(timeout=200)[0] for p in procs]
    finally:
        for p in procs:
            support.kill_group(p)
    for copy, p, out in zip(copies, procs, outputs):
        assert p.returncode == 0, "build in %s failed (%s):\n%s" % (copy, p.returncode, tail(out))
    digests = [hashlib.sha256((c / "dist" / "porthole").read_bytes()).hexdigest() for c in copies]
    for copy, digest in zip(copies, digests):
        assert (copy / "dist" / "porthole.sha256").read_text().split()[0] == digest
    assert digests[0] == digests[1], "builds differ: %s\n%s" % (
        dict(zip(map(str, copies), digests)), "\n".join(tail(o, 1500) for o in outputs))
    # and one SBOM (issue 22: item 3), made from what each build shipped
    sboms = [(c / "dist" / "porthole.spdx.json").read_bytes() for c in copies]
    assert sboms[0] == sboms[1]


@pytest.mark.docker
def test_mutual_tls_listener(porthole_binary, dockerd, busybox_image, containers, pki):
    """The frozen binary carries ssl: the docker CLI reads through a mutual-TLS listener, and a
    client without a certificate is refused."""
    name = "ph-bin-tls-%d" % os.getpid()
    containers(busybox_image, name=name, start=False)
    port = support.free_port()
    p = support.ProxyProcess(listen=[pki.listen_url(port)], upstream=dockerd.url, groups=[SOCK_GID],
                             proxy_path=porthole_binary, rules=False)
    tls = ["--tlsverify", "--tlscacert", str(pki.ca)]
    cert = ["--tlscert", str(pki.clients["other"].cert), "--tlskey", str(pki.clients["other"].key)]
    with p.running(ready_timeout=20):
        host = "tcp://127.0.0.1:%d" % port
        ps = support.docker_cli(host, *tls, *cert, "ps", "-a", "--format", "{{.Names}}", check=True)
        assert name in ps.stdout.split()
        assert support.docker_cli(host, *tls, "ps").returncode != 0
        assert p.wait_for_log(lambda l: l.get("event") == "tls_handshake_failed"
                              and "no certificate" in l.get("reason", ""))
