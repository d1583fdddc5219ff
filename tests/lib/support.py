"""Shared helpers for Porthole's integration tests.

Everything here talks to a *private* dockerd started in a temporary directory
(never /var/run/docker.sock) and to the proxy started as an unprivileged
subprocess.  Other test modules import these helpers; keep the API stable.

Public API
----------
REPO                                   repository root (Path)
PROXY_UID / PROXY_GID                  uid/gid the proxy runs as by default (65532)
free_port() -> int
short_tmpdir(prefix, mode=0o755) -> Path   short /tmp dir (unix socket paths are <108 bytes)
wait_until(pred, timeout, interval=0.05) -> bool
wait_for_item(queue, pred, timeout, what) -> item   next matching item a reader thread queued
unix_listen_url(filename="p.sock", query="mode=0660") -> (url, path)   listener in a 0777 dir
can_connect(address, timeout=0.5) -> bool   address: anything fake_upstream.connect takes
connect_as(path, uid, gid) -> socket    a unix connection made by a child running as uid/gid
connect_from(source_ip, (host, port)) -> socket   a TCP connection from a chosen loopback address
kill_group(popen)                       SIGKILL a start_new_session child's process group
rss_bytes(pid) -> int                   VmRSS of a process
fake_proc(root, {pid: argv}) -> str     a fake /proc (cmdline files) under root, for --doctor
require_docker_env()                    skip (or fail when CI=true) if no private dockerd can run
class Dockerd                           start(tmpdir, socket_group_gid, socket_path=None) / stop() / restart()
build_busybox_image(docker_url) -> str  image tag
run_sleeper(client, image, **kw)        create+start a `--network none` container (direct socket!)
put_file(container, path, data) / read_file(container, path) -> bytes   via the container's client
tar_of(name, data, mode=0o644, mtime=0) -> bytes   a tar archive of one file
stage_proxy(proxy_py, workdir) -> argv  proxy.py, porthole/ and h11 copied where any user reads them
class ProxyProcess                      the one way to start the proxy (proxy.py, the frozen
                                        binary or a wrapper command; non-root by default):
                                        `with p.running()`, start()/wait_ready()/stop_problems()/
                                        cleanup(), or run() for one-shot modes
run_proxy(*args, env=None, timeout=20) -> CompletedProcess   proxy.py as root, one-shot (--check, ...)
assert_served(p)                        a GET /_ping through the proxy `p` (its .addr) answers 200 OK
assert_porthole_error(resp, status)     `resp` is porthole's own JSON error with that status
count_events(p, event) -> int           how many of the proxy's log lines are `event`
write_rules(document) -> Path           a rules file the proxy's uid can read
docker_cli(host_url, *args, check=False, timeout=60, input=None) -> CompletedProcess
docker_cli_popen(host_url, *args) -> Popen  (long running commands such as `docker events`)
docker_env(host_url) -> dict            environment used for the docker CLI

Raw HTTP (to the proxy, to a dockerd, to the fake) goes through fake_upstream.HttpClient,
fake_upstream.get (one request) or fake_upstream.exchange (raw bytes sent, responses read);
fake_upstream.FakeUpstream is the one fake daemon (conftest's `upstream`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence
from urllib.parse import urlsplit

# fake_upstream beside this file: also when bench/ loads this file by its path
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_upstream as fu  # noqa: E402  (the one raw HTTP client)

REPO = Path(__file__).resolve().parents[2]  # tests/lib/support.py

PROXY_UID = 65532
PROXY_GID = 65532

DOCKER_CLI = shutil.which("docker") or "/usr/local/bin/docker"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
BUSYBOX = "/bin/busybox"
TEST_IMAGE = "porthole-test/busybox:latest"
DEFAULT_SOCK_GID = 2375  # group owning the private daemon's socket (no such group in /etc/group)

_CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --------------------------------------------------------------------------
# small utilities


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (127.0.0.1 or ::1)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_tmp_dirs: list = []


def short_tmpdir(prefix: str = "ph-", mode: int = 0o755) -> Path:
    """A fresh directory directly under /tmp (keeps unix socket paths short).

    Removed at interpreter exit if still present."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, mode)
    _tmp_dirs.append(d)
    return d


@atexit.register
def _cleanup_tmp_dirs() -> None:
    for d in _tmp_dirs:
        shutil.rmtree(d, ignore_errors=True)


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll pred() until true (returns True) or timeout (returns False)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def unix_listen_url(filename: str = "p.sock", query: str = "mode=0660"):
    """A unix listener URL in a fresh 0777 dir (writable by the proxy's uid 65532).

    Returns (url, socket_path), e.g. ("unix:///tmp/ph-l-xxx/p.sock?mode=0660", "/tmp/ph-l-xxx/p.sock")."""
    d = short_tmpdir("ph-l-", 0o777)
    path = str(d / filename)
    return "unix://" + path + ("?" + query if query else ""), path


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def docker_env_problem() -> Optional[str]:
    """Why a private dockerd cannot run here, or None."""
    if os.geteuid() != 0:
        return "must run as root to start a private dockerd"
    for exe in (DOCKERD, DOCKER_CLI):
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            return "%s not found" % exe
    if not shutil.which("setpriv"):
        return "setpriv not found"
    if not os.path.exists(BUSYBOX):
        return "%s (busybox-static) not found" % BUSYBOX
    return None


def require_docker_env() -> None:
    """pytest helper: skip (outside CI) or fail (CI=true) when no private dockerd can run."""
    import pytest

    problem = docker_env_problem()
    if problem:
        if in_ci():
            pytest.fail("CI=true but the Docker test environment is broken: " + problem)
        pytest.skip("Docker integration test environment unavailable: " + problem)


# --------------------------------------------------------------------------
# connections (the raw HTTP client is fake_upstream.HttpClient / fake_upstream.get)


def can_connect(address, timeout: float = 0.5) -> bool:
    """Whether a connection to `address` (anything fake_upstream.connect takes) succeeds now."""
    try:
        fu.connect(address, timeout).close()
        return True
    except OSError:
        return False


def connect_as(path: str, uid: int, gid: int, timeout: float = 5.0) -> socket.socket:
    """A connection to the unix socket `path` made by a forked child running as uid/gid (no
    supplementary groups), handed back to us: the server's SO_PEERCRED names uid/gid, and the
    test goes on using the connection (e.g. with fake_upstream.HttpClient)."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 1
        try:
            ours.close()
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            socket.send_fds(theirs, [b"c"], [conn.fileno()])
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    try:
        ours.settimeout(timeout)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    assert fds, "the child running as uid %d gid %d could not connect to %s" % (uid, gid, path)
    conn = socket.socket(fileno=fds[0])
    conn.settimeout(timeout)
    return conn


def connect_from(source_ip: str, address, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to `address` whose source is `source_ip` (any 127.0.0.0/8 address works
    on Linux loopback), for tests of address-based rules."""
    conn = socket.socket(socket.AF_INET6 if ":" in source_ip else socket.AF_INET, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.bind((source_ip, 0))
        conn.connect(address)
    except BaseException:
        conn.close()
        raise
    return conn


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a start_new_session=True child if it is still running
    (never anything else), and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def wait_for_item(items: "queue.Queue", pred: Callable[[object], bool], timeout: float, what: str):
    """Take items from a queue filled by a reader thread until pred(item) holds; returns that
    item. Fails with "<what> within <timeout>s; got [...]" when none does in time."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "%s within %ss; got %r" % (what, timeout, seen)
        try:
            item = items.get(timeout=remaining)
        except queue.Empty:
            continue
        seen.append(item)
        if pred(item):
            return item


# --------------------------------------------------------------------------
# podman


PODMAN = shutil.which("podman") or "/usr/bin/podman"
# A private podman: its own storage, run and tmp directories and configuration, so it shares
# nothing with any other podman (nor with dockerd); no network for any container by default.
# default_ulimits: podman would raise RLIMIT_NOFILE and RLIMIT_NPROC in every container, which
# needs CAP_SYS_RESOURCE (these machines' root lacks it: runc then fails with EPERM).
_PODMAN_CONF = """[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
volume_path = "{base}/volumes"
[network]
network_config_dir = "{base}/cni"
"""
_PODMAN_STORAGE = """[storage]
driver = "vfs"
graphroot = "{base}/root"
runroot = "{base}/run"
"""


def podman_problem() -> Optional[str]:
    if not (os.path.isfile(PODMAN) and os.access(PODMAN, os.X_OK)):
        return "podman not found (Debian's podman, in build.sh's TEST_PACKAGES)"
    return None


class Podman:
    """A private `podman system service` (Debian's podman 4) on a unix socket.

    p = Podman(); p.start(sock_gid)   p.url, p.socket_path; p.cli(*args) runs podman directly
    (not through the service) with the same private configuration; p.stop() removes everything."""

    def __init__(self):
        self.base: Optional[Path] = None
        self.proc: Optional[subprocess.Popen] = None
        self.socket_path = ""
        self.url = ""

    def env(self) -> dict:
        return {"PATH": _CLEAN_PATH, "LANG": "C.UTF-8", "CONTAINERS_CONF": str(self.base / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf"), "XDG_RUNTIME_DIR": str(self.base / "xdg"),
                "TMPDIR": str(self.base / "tmp")}

    def start(self, socket_group_gid: int, timeout: float = 30.0) -> "Podman":
        self.base = Path(tempfile.mkdtemp(prefix="php-", dir="/tmp"))
        os.chmod(self.base, 0o755)  # the proxy (uid 65532) must reach the socket
        for sub in ("tmp", "xdg", "cni", "volumes"):
            (self.base / sub).mkdir(mode=0o700)
        (self.base / "containers.conf").write_text(_PODMAN_CONF.format(base=self.base))
        (self.base / "storage.conf").write_text(_PODMAN_STORAGE.format(base=self.base))
        self.socket_path = str(self.base / "podman.sock")
        self.url = "unix://" + self.socket_path
        log = open(self.base / "service.log", "wb")
        self.proc = subprocess.Popen([PODMAN, "system", "service", "--time=0", self.url], env=self.env(),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        if not wait_until(lambda: can_connect(self.socket_path), timeout, 0.1):
            raise RuntimeError("podman system service did not start:\n" + self.log_tail())
        os.chown(self.socket_path, 0, socket_group_gid)
        os.chmod(self.socket_path, 0o660)
        return self

    def cli(self, *args, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run([PODMAN, *args], env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("podman %s failed (%s):\n%s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join((self.base / "service.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.base is None:
            return
        with contextlib.suppress(Exception):
            self.cli("rm", "--all", "--force", "--time", "0", check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
        with contextlib.suppress(Exception):  # vfs layers and container files: podman's to remove
            self.cli("system", "reset", "--force", check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None


def import_busybox_into_podman(podman: Podman, tag: str = "localhost/porthole-busybox:latest") -> str:
    """A FROM-scratch image made of busybox-static, imported locally (no registry); returns its id."""
    root = Path(tempfile.mkdtemp(prefix="php-img-", dir="/tmp"))
    try:
        (root / "bin").mkdir()
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in ("sh", "sleep", "true"):
            os.symlink("busybox", root / "bin" / applet)
        archive = root.parent / (root.name + ".tar")
        subprocess.run(["tar", "-C", str(root), "-cf", str(archive), "."], check=True)
        out = podman.cli("import", "--change", 'CMD ["/bin/sh"]', str(archive), tag).stdout
        archive.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out.strip().splitlines()[-1].removeprefix("sha256:")


# --------------------------------------------------------------------------
# dockerd


class DockerdError(RuntimeError):
    pass


class Dockerd:
    """A private dockerd (and its own containerd) in a temporary directory.

    d = Dockerd(); d.start(tmpdir, 2375)   # log goes to tmpdir/dockerd-N.log
    d.url -> "unix:///tmp/phd-xxx/docker.sock"; d.socket_path; d.sock_gid
    d.restart(); d.stop()

    Data/exec roots live in a short directory under /tmp (unix socket path
    limits); `socket_path` may be given to put the API socket elsewhere (its
    directory must already exist)."""

    _counter = 0

    def __init__(self, extra_args: Sequence[str] = ()):
        self.extra_args = tuple(extra_args)  # e.g. a loopback TCP --host for the benchmark
        self.proc: Optional[subprocess.Popen] = None
        self.base: Optional[Path] = None
        self.socket_path: Optional[str] = None
        self.url: Optional[str] = None
        self.sock_gid: Optional[int] = None
        self.log_path: Optional[Path] = None
        self._log_file = None
        self._tmpdir: Optional[Path] = None

    # -- public --------------------------------------------------------------
    def start(self, tmpdir, socket_group_gid: int, socket_path=None, timeout: float = 60.0) -> "Dockerd":
        if self.proc is not None and self.proc.poll() is None:
            raise DockerdError("already running")
        self._tmpdir = Path(tmpdir)
        self._tmpdir.mkdir(parents=True, exist_ok=True)
        self.sock_gid = int(socket_group_gid)
        self.base = Path(tempfile.mkdtemp(prefix="phd-", dir="/tmp"))
        os.chmod(self.base, 0o755)  # the proxy (uid 65532) must traverse to the socket
        for sub in ("data", "exec"):
            (self.base / sub).mkdir(mode=0o700)
        (self.base / "daemon.json").write_text("{}\n")
        self.socket_path = str(socket_path) if socket_path else str(self.base / "docker.sock")
        self.url = "unix://" + self.socket_path
        self._launch(timeout)
        return self

    def restart(self, timeout: float = 60.0) -> None:
        """Stop dockerd (containers are stopped by it, not removed) and start it again
        with the same roots and socket."""
        self._terminate()
        self._launch(timeout)

    def stop(self, remove_containers: bool = True) -> None:
        """Remove containers (best effort), stop dockerd, kill leftover
        containerd/shim processes of *this* daemon, unmount leftovers and delete
        the temporary roots."""
        if self.base is None:
            return
        if remove_containers and self.proc is not None and self.proc.poll() is None:
            try:
                self._remove_all_containers()
            except Exception:
                pass
        self._terminate()
        self._kill_leftovers()
        self._unmount_leftovers()
        shutil.rmtree(self.base, ignore_errors=True)
        if self.socket_path and not self.socket_path.startswith(str(self.base)):
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        self.base = None
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            r = fu.get(self.socket_path, "/_ping", timeout=timeout)
        except (OSError, fu.ConnectionClosed):
            return False
        return r.status == 200 and r.body == b"OK"

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except Exception:
            return ""

    def client(self, **kw):
        """docker SDK client talking DIRECTLY to the daemon socket."""
        import docker  # noqa: local import, support.py must import without the SDK

        kw.setdefault("timeout", 60)
        return docker.DockerClient(base_url=self.url, **kw)

    # -- internals -------------------------------------------------------------
    def _launch(self, timeout: float) -> None:
        Dockerd._counter += 1
        self.log_path = self._tmpdir / ("dockerd-%d-%s.log" % (Dockerd._counter, self.base.name))
        self._log_file = open(self.log_path, "ab")
        cmd = [
            DOCKERD,
            "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--ip-forward=false", "--ip-masq=false",
            "--data-root", str(self.base / "data"),
            "--exec-root", str(self.base / "exec"),
            "--pidfile", str(self.base / "dockerd.pid"),
            "--host", self.url,
            "--group", str(self.sock_gid),
            "--config-file", str(self.base / "daemon.json"),
            *self.extra_args,
        ]
        # TMPDIR: containerd writes goroutine dumps (e.g. when dockerd restarts it
        # after its startup race) to $TMPDIR; keep them inside our directory.
        env = {"PATH": _CLEAN_PATH, "LANG": "C.UTF-8", "HOME": str(self.base), "TMPDIR": str(self.base)}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DockerdError("dockerd exited with %s:\n%s" % (self.proc.returncode, self.log_tail()))
            if os.path.exists(self.socket_path) and self.ping():
                break
            if time.monotonic() > deadline:
                self._terminate()
                raise DockerdError("dockerd did not answer /_ping within %ss:\n%s" % (timeout, self.log_tail()))
            time.sleep(0.1)
        st = os.stat(self.socket_path)
        if st.st_gid != self.sock_gid or (st.st_mode & 0o777) != 0o660:
            # dockerd did not apply --group (e.g. numeric gid unsupported): do it ourselves
            os.chown(self.socket_path, 0, self.sock_gid)
            os.chmod(self.socket_path, 0o660)

    def _terminate(self, timeout: float = 40.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log_file:
            self._log_file.close()
            self._log_file = None
        # the containerd child exits together with dockerd; give it a moment
        wait_until(lambda: not self._own_pids(), 10)

    def _remove_all_containers(self) -> None:
        r = fu.get(self.socket_path, "/containers/json?all=1", timeout=10)
        if r.status != 200:
            return
        for c in r.json():
            fu.get(self.socket_path, "/containers/%s?force=1&v=1" % c["Id"], method="DELETE", timeout=30)

    _DAEMON_EXES = {"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v1",
                    "containerd-shim-runc-v2", "runc", "docker-init", "docker-proxy"}

    def _own_pids(self) -> list:
        """pids of daemon processes (dockerd, containerd, shims, runc) whose command
        line mentions this daemon's private directory.  Clients such as a proxy
        pointed at our socket are never included."""
        if self.base is None:
            return []
        marker = str(self.base).encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    cmdline = f.read()
                exe = os.path.basename(os.readlink("/proc/%s/exe" % entry))
            except OSError:
                continue
            if exe.endswith(" (deleted)"):
                exe = exe[: -len(" (deleted)")]
            if exe in self._DAEMON_EXES and marker in cmdline:
                pids.append(int(entry))
        return pids

    def _kill_leftovers(self) -> None:
        for pid in self._own_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self._own_pids(), 10)

    def _unmount_leftovers(self) -> None:
        marker = str(self.base)
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == marker or mp.startswith(marker + "/"):
                    mounts.append(mp)
        for mp in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# --------------------------------------------------------------------------
# image & containers


def build_busybox_image(docker_url: str, tag: str = TEST_IMAGE) -> str:
    """Build a tiny `FROM scratch` busybox image on the daemon at docker_url.

    Uses the legacy builder with `--network none`; returns the tag."""
    ctx = Path(tempfile.mkdtemp(prefix="ph-img-"))
    try:
        shutil.copy2(BUSYBOX, ctx / "busybox")
        (ctx / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY busybox /bin/busybox\n"
            'RUN ["/bin/busybox","--install","-s","/bin"]\n'
            'CMD ["/bin/sh"]\n'
        )
        env = {"DOCKER_BUILDKIT": "0"}
        r = docker_cli(docker_url, "build", "--network", "none", "--rm", "--force-rm",
                       "-t", tag, str(ctx), timeout=180, extra_env=env)
        if r.returncode != 0:
            raise RuntimeError("image build failed (%s):\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return tag


def run_sleeper(client, image: str, name: Optional[str] = None, start: bool = True, **kw):
    """Create (and start) a long-sleeping container with `--network none`.

    `client` must be a DIRECT daemon client (Dockerd.client()).  The container
    stops quickly (stop_signal SIGKILL) so daemon restarts stay fast."""
    kw.setdefault("command", ["sleep", "3600"])
    kw.setdefault("stop_signal", "SIGKILL")
    kw["network_mode"] = "none"
    c = client.containers.create(image, name=name, **kw)
    if start:
        c.start()
    c.reload()
    return c


def tar_of(name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> bytes:
    """A tar archive holding one regular file."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.mtime = mtime
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put_file(container, path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a file into a container through `container`'s (DIRECT) client."""
    directory, _, name = path.rpartition("/")
    if not container.put_archive(directory or "/", tar_of(name, data, mode, int(time.time()))):
        raise RuntimeError("put_archive %s failed" % path)


def read_file(container, path: str) -> bytes:
    """Read a regular file from a container through its (DIRECT) client.

    Raises docker.errors.NotFound if it does not exist."""
    import io
    import tarfile

    stream, _ = container.get_archive(path)
    buf = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buf) as tar:
        member = tar.getmembers()[0]
        return tar.extractfile(member).read()


# --------------------------------------------------------------------------
# docker CLI

_docker_config_dir: Optional[Path] = None


def _docker_config() -> Path:
    global _docker_config_dir
    if _docker_config_dir is None or not _docker_config_dir.exists():
        _docker_config_dir = short_tmpdir("ph-dcfg-", 0o700)
        (_docker_config_dir / "config.json").write_text("{}\n")
    return _docker_config_dir


def docker_env(host_url: str, extra_env: Optional[dict] = None) -> dict:
    env = {
        "PATH": _CLEAN_PATH,
        "HOME": str(_docker_config()),
        "LANG": "C.UTF-8",
        "DOCKER_HOST": host_url,
        "DOCKER_CONFIG": str(_docker_config()),
        "DOCKER_CLI_HINTS": "false",
        "DOCKER_CLI_EXPERIMENTAL": "disabled",
    }
    if extra_env:
        env.update(extra_env)
    return env


def docker_cli(host_url: str, *args, check: bool = False, timeout: float = 60,
               input: Optional[str] = None, extra_env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """Run the real docker CLI against host_url (tcp://... or unix://...).

    Returns CompletedProcess with text stdout/stderr; raises on timeout."""
    cmd = [DOCKER_CLI] + [str(a) for a in args]
    r = subprocess.run(cmd, env=docker_env(host_url, extra_env), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL if input is None else None, input=input)
    if check and r.returncode != 0:
        raise AssertionError("%s failed (%s)\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(cmd), r.returncode, r.stdout, r.stderr))
    return r


def docker_cli_popen(host_url: str, *args, extra_env: Optional[dict] = None) -> subprocess.Popen:
    """Start a long-running docker CLI command (stdout/stderr pipes, binary)."""
    cmd = [DOCKER_CLI] + [str(a) for a in args]
    return subprocess.Popen(cmd, env=docker_env(host_url, extra_env), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


# --------------------------------------------------------------------------
# the proxy


class ProxyError(RuntimeError):
    pass


def _copy_tree_readable(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for root, dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def stage_proxy(proxy_py: Path, workdir: Path) -> list:
    """Copy proxy.py, the porthole package beside it and the test venv's h11 into `workdir`,
    readable by any user: the command line that runs it (python, workdir/proxy.py)."""
    shutil.copy2(proxy_py, workdir / "proxy.py")
    os.chmod(workdir / "proxy.py", 0o644)
    package = proxy_py.parent / "porthole"  # the code proxy.py runs
    if package.is_dir():
        _copy_tree_readable(package, workdir / "porthole")
    import h11  # the test venv's h11

    _copy_tree_readable(Path(h11.__file__).resolve().parent, workdir / "h11")
    python = getattr(sys, "_base_executable", None) or sys.executable
    return [python, str(workdir / "proxy.py")]


class ProxyProcess:
    """The proxy as a subprocess: the one way the tests start it.

    By default runs proxy.py as uid/gid 65532 (setpriv) with no supplementary groups
    except `groups`.  proxy.py, rules.json and the h11 package (or the frozen executable)
    are copied to a fresh world-readable directory (`.workdir`, also the process's cwd),
    so the checkout location does not matter.  The process leads its own process group.

    Arguments:
      listen:   list of listener URLs (each becomes `--listen URL`); None = pass none
      upstream: upstream URL (`--upstream`); None = pass none
      args:     extra command line arguments
      groups:   supplementary gids for the non-root process
      as_root:  run as root, without setpriv (the proxy then needs --allow-root to serve)
      env:      extra environment variables (the base environment is minimal)
      rules:    None -> copy REPO/rules.json and pass `--rules <workdir>/rules.json`;
                a path -> copy that file instead; False -> copy REPO/rules.json but
                pass no --rules option (the proxy's default: rules.json beside proxy.py,
                or those bundled into the executable).
      proxy_path: the proxy.py to run (default $PH_TEST_PROXY_PY or REPO/proxy.py), or an
                executable (a name not ending in .py: the frozen dist/porthole), run as it is
      command:  the command line to run instead of `[setpriv ...] python proxy.py` or the
                copied executable (e.g. a namespace + chroot wrapper around a staged binary);
                the arguments above are appended to it; only rules.json is copied

    Use: `with ProxyProcess(...).running() as p:` (must stay up and exit 0 on SIGTERM), or
    start() / wait_ready() / stop_problems() / cleanup() (conftest's proxy_factory), or
    run() for the one-shot modes (--version, --check, --healthcheck, usage errors).
    """

    def __init__(self, listen: Optional[Sequence[str]] = None, upstream: Optional[str] = None,
                 args: Sequence[str] = (), groups: Optional[Iterable[int]] = None,
                 as_root: bool = False, env: Optional[dict] = None, rules=None,
                 proxy_path=None, command: Optional[Sequence[str]] = None):
        self.listen = list(listen) if listen else []
        self.upstream = upstream
        self.extra_args = [str(a) for a in args]
        self.groups = [int(g) for g in (groups or [])]
        self.as_root = as_root
        self.extra_env = dict(env or {})
        self.rules_src = rules
        if proxy_path is None:
            # PH_TEST_PROXY_PY: developer override to run the suite against another proxy.py
            proxy_path = os.environ.get("PH_TEST_PROXY_PY") or (REPO / "proxy.py")
        self.proxy_src = Path(proxy_path)
        self.frozen = self.proxy_src.suffix != ".py"
        self.command = [str(c) for c in command] if command else None
        self.proc: Optional[subprocess.Popen] = None
        self.workdir: Optional[Path] = None
        self.rules_path: Optional[Path] = None
        self.cmd: list = []
        self._stderr_lines: list = []
        self._stdout_chunks: list = []
        self._lock = threading.Lock()
        self._threads: list = []

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> "ProxyProcess":
        if self.command is None and not self.proxy_src.exists():
            raise ProxyError("%s does not exist" % self.proxy_src)
        self.workdir = Path(tempfile.mkdtemp(prefix="ph-proxy-", dir="/tmp"))
        _tmp_dirs.append(self.workdir)
        os.chmod(self.workdir, 0o755)
        env = {"PATH": _CLEAN_PATH, "LANG": "C.UTF-8"}
        if self.command is not None:
            program = list(self.command)
        elif self.frozen:
            shutil.copy2(self.proxy_src, self.workdir / "porthole")
            os.chmod(self.workdir / "porthole", 0o755)
            program = [str(self.workdir / "porthole")]
        else:
            program = stage_proxy(self.proxy_src, self.workdir)
            env.update({"PYTHONPATH": str(self.workdir), "PYTHONDONTWRITEBYTECODE": "1",
                        "PYTHONUNBUFFERED": "1"})
        default_rules = self.proxy_src.parent / "rules.json"  # beside a $PH_TEST_PROXY_PY
        if not default_rules.exists():  # dist/ holds none
            default_rules = REPO / "rules.json"
        src = default_rules if self.rules_src in (None, False) else Path(self.rules_src)
        self.rules_path = self.workdir / "rules.json"
        if src.exists():
            shutil.copy2(src, self.rules_path)
            os.chmod(self.rules_path, 0o644)

        argv = []
        for url in self.listen:
            argv += ["--listen", url]
        if self.upstream:
            argv += ["--upstream", self.upstream]
        if self.rules_src is not False and "--rules" not in self.extra_args:
            argv += ["--rules", str(self.rules_path)]
        argv += self.extra_args

        prefix = []
        if not self.as_root and self.command is None:
            prefix = ["setpriv", "--reuid=%d" % PROXY_UID, "--regid=%d" % PROXY_GID]
            if self.groups:
                prefix.append("--groups=" + ",".join(str(g) for g in self.groups))
            else:
                prefix.append("--clear-groups")
        self.cmd = prefix + program + argv
        env.update(self.extra_env)
        self.proc = subprocess.Popen(self.cmd, cwd=str(self.workdir), env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        t1 = threading.Thread(target=self._read_stderr, daemon=True)
        t2 = threading.Thread(target=self._read_stdout, daemon=True)
        t1.start()
        t2.start()
        self._threads = [t1, t2]
        return self

    @contextlib.contextmanager
    def running(self, ready_timeout: float = 10.0):
        """start() and wait_ready(); on leaving the block the proxy must still be running
        and exit 0 on SIGTERM (AssertionError otherwise).  Cleaned up in any case."""
        self.start()
        try:
            self.wait_ready(ready_timeout)
            yield self
            problems = self.stop_problems()
            assert not problems, "\n\n".join(problems)
        finally:
            self.cleanup()

    def run(self, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """One-shot modes (--version, --check, --healthcheck, usage errors): start, wait for
        the proxy to exit by itself, clean up.  Returns a CompletedProcess with text output;
        raises subprocess.TimeoutExpired (after killing it) if it runs longer than timeout."""
        self.start()
        try:
            rc = self.wait(timeout)
            return subprocess.CompletedProcess(self.cmd, rc, self.stdout_text(), self.stderr_text())
        finally:
            self.cleanup()

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            with self._lock:
                self._stderr_lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        self.proc.stderr.close()

    def _read_stdout(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            with self._lock:
                self._stdout_chunks.append(chunk)
        self.proc.stdout.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig`, wait up to `timeout`; SIGKILL if it hangs (then raises)."""
        if self.proc is None:
            raise ProxyError("not started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
                for t in self._threads:
                    t.join(5)
                raise ProxyError("proxy did not exit within %ss after signal %s; killed.\n%s"
                                 % (timeout, sig, self.stderr_text()[-4000:]))
        for t in self._threads:
            t.join(5)
        return self.proc.returncode

    def stop_problems(self, must_be_running: bool = True, must_exit_0: bool = True) -> list:
        """SIGTERM and wait (stop()); returns what went wrong, as messages: it had exited
        already (with must_be_running), it did not exit within 15 s (killed), it exited
        non-zero after the SIGTERM (with must_exit_0)."""
        problems = []
        was_running = self.alive()
        if must_be_running and not was_running:
            problems.append("proxy %s exited (%s) before it was stopped; stderr tail:\n%s"
                            % (self.cmd, self.returncode, self.stderr_text()[-3000:]))
        try:
            rc = self.stop(signal.SIGTERM, timeout=15)
        except ProxyError as e:
            return problems + [str(e)]
        if was_running and must_exit_0 and rc != 0:
            problems.append("proxy %s exited %s on SIGTERM; stderr tail:\n%s"
                            % (self.cmd, rc, self.stderr_text()[-3000:]))
        return problems

    def cleanup(self) -> None:
        """Kill what is left of it, print its stderr (tail) for the test report, remove the
        workdir."""
        if self.proc is not None:
            kill_group(self.proc)
            for t in self._threads:
                t.join(5)
            print("---- proxy pid %s stderr (tail) ----\n%s" % (self.pid, self.stderr_text()[-6000:]))
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- output ------------------------------------------------------------------
    def stderr_lines(self) -> list:
        with self._lock:
            return list(self._stderr_lines)

    def stderr_text(self) -> str:
        return "\n".join(self.stderr_lines())

    def stdout_text(self) -> str:
        with self._lock:
            return b"".join(self._stdout_chunks).decode("utf-8", "replace")

    def logs(self) -> list:
        """Parsed JSON log lines from stderr (non-JSON lines are skipped)."""
        out = []
        for line in self.stderr_lines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def requests_logged(self, **match) -> list:
        """Request log lines (event == "request") whose fields equal `match`."""
        return [l for l in self.logs() if l.get("event") == "request"
                and all(l.get(k) == v for k, v in match.items())]

    def wait_for_log(self, pred: Callable[[dict], bool], timeout: float = 5.0) -> Optional[dict]:
        """Wait until a parsed log line satisfies pred; returns it (or None on timeout)."""
        found = []

        def check():
            for l in self.logs():
                if pred(l):
                    found.append(l)
                    return True
            return False

        wait_until(check, timeout)
        return found[0] if found else None

    # -- readiness ---------------------------------------------------------------
    def first_listener_address(self):
        if not self.listen:
            return ("127.0.0.1", 2375)
        u = urlsplit(self.listen[0])
        if u.scheme == "unix":
            return u.path
        return (u.hostname, u.port)

    def wait_ready(self, timeout: float = 10.0) -> "ProxyProcess":
        """Wait for the "listening" log event or a successful connect to the first
        listener, then until every unix listener accepts connections (its socket file may
        appear after the TCP listener).  Raises ProxyError (with stderr) if the proxy exits
        or times out."""
        addr = self.first_listener_address()
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if any(l.get("event") == "listening" for l in self.logs()):
                break
            if self.proc.poll() is not None:
                for t in self._threads:
                    t.join(2)
                raise ProxyError("proxy exited with %s before being ready.\ncmd: %s\nstderr:\n%s"
                                 % (self.proc.returncode, self.cmd, self.stderr_text()[-4000:]))
            # no "listening" line yet (e.g. text log format): probe the listener
            if time.monotonic() > started + 1.0 and can_connect(addr):
                break
            if time.monotonic() > deadline:
                raise ProxyError("proxy not ready within %ss.\ncmd: %s\nstderr:\n%s"
                                 % (timeout, self.cmd, self.stderr_text()[-4000:]))
            time.sleep(0.05)
        for url in self.listen:
            path = urlsplit(url).path
            if url.startswith("unix://") and not wait_until(lambda: can_connect(path),
                                                            max(5.0, deadline - time.monotonic())):
                raise ProxyError("unix listener %s never accepted connections.\nstderr:\n%s"
                                 % (path, self.stderr_text()[-4000:]))
        return self


def run_proxy(*args, env: Optional[dict] = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """proxy.py as root in a one-shot mode (--version, --check, a usage error), without a --rules
    option (so its default rules.json, or none with Tecnativa-style variables in `env`):
    CompletedProcess with text output."""
    return ProxyProcess(args=args, as_root=True, env=env, rules=False).run(timeout)


def assert_served(p, timeout: float = 5.0) -> None:
    """The proxy `p` (its `.addr`: fake_upstream.connect's address) answers GET /_ping with 200 OK."""
    r = fu.get(p.addr, "/_ping", timeout=timeout)
    assert (r.status, r.body) == (200, b"OK"), r


def assert_porthole_error(resp, status: int) -> None:
    """`resp` (a fake_upstream.Response) is an answer porthole made itself: `status`, a JSON body
    whose message starts with "porthole: "."""
    assert resp.status == status, (resp, resp.body)
    assert "json" in (resp.header("content-type") or ""), resp.headers
    message = resp.json()["message"]
    assert message.startswith("porthole: "), message


def count_events(p, event: str) -> int:
    """How many of the proxy `p`'s log lines are `event`."""
    return sum(1 for l in p.logs() if l.get("event") == event)


def write_rules(document: dict) -> Path:
    """A rules file in a fresh world-readable directory (the proxy runs as uid 65532)."""
    path = short_tmpdir("ph-rules-") / "rules.json"
    path.write_text(json.dumps(document, indent=1))
    path.chmod(0o644)
    return path


def fake_proc(root: Path, processes: dict) -> str:
    """A /proc with one directory per pid holding `cmdline` (NUL-separated, as the kernel writes it)."""
    for pid, argv in processes.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (root / "self").mkdir(exist_ok=True)
    return str(root)


def rss_bytes(pid: int) -> int:
    """VmRSS of a process (ProxyProcess's setpriv execs python, so its pid is the proxy)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)
