"""pytest fixtures shared by every directory: one private dockerd per session, the busybox
test image, a private podman, the recording fake daemon, and factories for proxy subprocesses.

The suite's layout (one directory per kind of test):

    unit/       no daemon, no proxy process: the modules of porthole/ alone, mirrored
                (unit/core/test_target.py tests porthole/core/target.py, ...)
    daemon/     the proxy process in front of the private dockerd or the fake daemon
    consumers/  real consumers through the proxy: docker CLI, SDK, compose, Prometheus, ...
    artifacts/  the frozen binary, the image, arm64
    hostile/    hostile clients and daemons, the fuzz corpus
    lib/        the helpers, one copy of each (on sys.path: `import support`)

Docker-dependent fixtures skip outside CI when the environment cannot run a
private daemon (not root, dockerd/docker/setpriv missing); with CI=true they
fail instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for _path in (TESTS.parent, TESTS / "lib"):  # the porthole package; the helpers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import support  # noqa: E402


require_docker_env = support.require_docker_env


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory):
    """The session's private dockerd (socket root:2375 0660)."""
    require_docker_env()
    d = support.Dockerd()
    d.start(tmp_path_factory.mktemp("dockerd"), support.DEFAULT_SOCK_GID)
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="session")
def docker_direct(dockerd):
    """docker SDK client talking DIRECTLY to the private daemon (not through the proxy)."""
    client = dockerd.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def busybox_image(dockerd):
    return support.build_busybox_image(dockerd.url)


@pytest.fixture(scope="session")
def podman():
    """A private `podman system service` (Debian's podman), socket root:2375 0660, with a
    FROM-scratch busybox image imported as `.image` (its id `.image_id`)."""
    require_docker_env()
    problem = support.podman_problem()
    if problem:
        if support.in_ci():
            pytest.fail("CI=true but podman cannot run: " + problem)
        pytest.skip(problem)
    p = support.Podman().start(support.DEFAULT_SOCK_GID)
    try:
        p.image = "localhost/porthole-busybox:latest"
        p.image_id = support.import_busybox_into_podman(p, p.image)
        yield p
    finally:
        p.stop()


@pytest.fixture
def proxy_factory(request):
    """Start proxies: proxy_factory(listen=None, upstream=None, args=(), groups=None,
    as_root=False, env=None, rules=None, wait=True, expect_clean_exit=True).

    Defaults: one tcp://127.0.0.1:<free port> listener, upstream = the session
    dockerd with its socket group as supplementary group.  At teardown every
    proxy still running gets SIGTERM and must exit 0 (unless
    expect_clean_exit=False)."""
    started = []

    def factory(listen=None, upstream=None, args=(), groups=None, as_root=False, env=None,
                rules=None, wait=True, expect_clean_exit=True, ready_timeout=10.0, proxy_path=None):
        if listen is None:
            listen = ["tcp://127.0.0.1:%d" % support.free_port()]
        if upstream is None:
            d = request.getfixturevalue("dockerd")
            upstream = d.url
            if groups is None:
                groups = [d.sock_gid]
        p = support.ProxyProcess(listen=listen, upstream=upstream, args=args, groups=groups,
                                 as_root=as_root, env=env, rules=rules, proxy_path=proxy_path)
        p.expect_clean_exit = expect_clean_exit
        started.append(p)
        p.start()
        if wait:
            p.wait_ready(ready_timeout)
        return p

    yield factory

    problems = []
    for p in started:
        if p.proc is None:
            continue
        problems += p.stop_problems(must_be_running=False, must_exit_0=p.expect_clean_exit)
        p.cleanup()
    if problems:
        pytest.fail("\n\n".join(problems))


@pytest.fixture
def start_proxy(proxy_factory, upstream, request):
    """start_proxy(*args, rules=None, **proxy_factory_kw): a proxy in front of the fake
    `upstream` (or of upstream=URL), with the test module's RULES (a dict) unless `rules` (a
    file) is given. `.addr` is its first listener's address (for fake_upstream.HttpClient / get)."""
    def start(*args, rules=None, **kw):
        if rules is None:
            rules = support.write_rules(request.module.RULES)
        kw.setdefault("upstream", upstream.url)
        p = proxy_factory(rules=rules, args=[str(a) for a in args], **kw)
        p.addr = p.first_listener_address()
        return p
    return start


@pytest.fixture(scope="module")
def shared_proxy(dockerd):
    """One proxy per test module with a TCP and a unix listener (mode 0660), running
    as uid 65532 with the daemon socket's group.  `.hosts` maps "tcp"/"unix" to
    DOCKER_HOST URLs.  Must stay up for the whole module and exit 0 on SIGTERM."""
    port = support.free_port()
    unix_url, unix_path = support.unix_listen_url("p.sock", "mode=0660")
    p = support.ProxyProcess(
        listen=["tcp://127.0.0.1:%d" % port, unix_url],
        upstream=dockerd.url,
        groups=[dockerd.sock_gid],
    )
    with p.running():
        p.hosts = {"tcp": "tcp://127.0.0.1:%d" % port, "unix": "unix://" + unix_path}
        p.unix_path = unix_path
        yield p


@pytest.fixture(params=["tcp", "unix"])
def proxy_url(request, shared_proxy):
    """URL of one of the shared proxy's listeners; tests using it run once per listener."""
    return shared_proxy.hosts[request.param]


@pytest.fixture
def containers(docker_direct):
    """containers(image, **kw): create+start `--network none` containers DIRECTLY;
    all removed at teardown."""
    import docker

    made = []

    def make(image, **kw):
        c = support.run_sleeper(docker_direct, image, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="module")
def pki():
    """Certificates for the TLS tests (tests/lib/tls_certs.py), made once per test module."""
    import tls_certs
    return tls_certs.make_pki(support.short_tmpdir("ph-pki-"))


@pytest.fixture
def upstream():
    """A recording fake daemon on a unix socket (tests/lib/fake_upstream.py)."""
    from fake_upstream import FakeUpstream
    up = FakeUpstream().start()
    yield up
    up.stop()
