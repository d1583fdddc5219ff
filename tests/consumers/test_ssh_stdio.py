"""porthole --stdio as an SSH forced command (issue 21, item 1), with Debian's sshd on 127.0.0.1,
a test user whose keys force `proxy.py --stdio ...`, the real docker CLI (`-H ssh://`, `docker
context`) and the Python SDK (paramiko, and the ssh binary with use_ssh_client=True), against
the session's private dockerd."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import docker
import pytest

import support
from sshd import SshTestbed, sshd_problem

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def bed(dockerd):
    problem = sshd_problem()
    if problem:
        if support.in_ci():
            pytest.fail("CI=true but sshd cannot run: " + problem)
        pytest.skip(problem)
    testbed = SshTestbed(groups=[dockerd.sock_gid])
    logs = support.short_tmpdir("ph-sshlog-", 0o777)
    testbed.log_file = logs / "porthole.log"
    rules = json.loads((support.REPO / "rules.json").read_text())
    rules["profiles"]["default"] = {"rules": [{"method": ["GET", "HEAD"], "path": "/_ping"}]}
    rules["clients"] = [{"match": {"ssh_user": testbed.user}, "profile": "docker-cli"}]
    by_user = support.write_rules(rules)
    upstream = "--upstream %s --log-file %s" % (dockerd.url, testbed.log_file)
    testbed.add_key("cli", "proxy.py --stdio --profile docker-cli " + upstream)
    testbed.add_key("byuser", "proxy.py --stdio --rules %s %s" % (by_user, upstream))
    testbed.add_key("down", "proxy.py --stdio --upstream unix:///nonexistent/docker.sock --log-file %s"
                    % testbed.log_file)
    testbed.add_key("nolog", "proxy.py --stdio --profile docker-cli --upstream " + dockerd.url)
    try:
        yield testbed
    finally:
        print("---- sshd log (tail) ----\n" + testbed.log()[-3000:])
        print("---- ssh command lines ----\n" + "\n".join(testbed.ssh_commands()[-20:]))
        testbed.stop()


def cli(bed, *args, host="cli", timeout=60):
    env = bed.env({"DOCKER_HOST": bed.url(host)} if host else None)
    return subprocess.run([support.DOCKER_CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def porthole_log(bed) -> list:
    try:
        text = bed.log_file.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_docker_cli_reads_and_sees_porthole_refusals(bed, containers, busybox_image):
    box = containers(busybox_image, name="ph-ssh-%s" % uuid.uuid4().hex[:8])
    r = cli(bed, "ps", "--format", "{{.Names}}")
    assert r.returncode == 0, r.stderr
    assert box.name in r.stdout.split()
    r = cli(bed, "version", "--format", "{{.Server.APIVersion}}")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = cli(bed, "run", "--rm", "--network", "none", busybox_image, "true")
    assert r.returncode != 0 and "porthole: method POST is never forwarded" in r.stderr, r.stderr
    r = cli(bed, "exec", box.id, "true")
    assert r.returncode != 0 and "porthole: method POST is never forwarded" in r.stderr, r.stderr
    r = cli(bed, "logs", box.id)
    assert r.returncode != 0 and "porthole:" in r.stderr and "dangerous read" in r.stderr, r.stderr
    assert any(c.endswith("docker system dial-stdio") for c in bed.ssh_commands()), bed.ssh_commands()


def test_the_log_names_the_ssh_user_and_connection(bed):
    assert cli(bed, "info", "--format", "{{.ID}}").returncode == 0
    sessions = [l for l in porthole_log(bed) if l.get("event") == "stdio_session"]
    assert sessions, porthole_log(bed)
    last = sessions[-1]
    assert last["ssh_user"] == bed.user and last["ssh_connection"].startswith("127.0.0.1 ")
    assert last["ssh_command"] == "docker system dial-stdio" and last["profile"] == "docker-cli"
    requests = [l for l in porthole_log(bed) if l.get("event") == "request" and l["client"] == last["client"]]
    assert requests and all(l["listener"] == "stdio:" for l in requests)
    print("requests of one `docker info` over ssh:", [(l["method"], l["target"], l["status"]) for l in requests])


def test_docker_context_over_ssh(bed):
    name = "ph-ssh-%s" % uuid.uuid4().hex[:8]
    r = cli(bed, "context", "create", name, "--docker", "host=" + bed.url("cli"), host=None)
    assert r.returncode == 0, r.stderr
    r = cli(bed, "--context", name, "ps", "-a", "--format", "{{.ID}}", host=None)
    assert r.returncode == 0, r.stderr
    r = cli(bed, "--context", name, "volume", "create", host=None)
    assert r.returncode != 0 and "porthole: method POST is never forwarded" in r.stderr, r.stderr


def test_a_clients_entry_for_the_ssh_user_picks_the_profile(bed):
    """The key names no --profile and the rules' default allows only /_ping: `docker ps` works
    because `clients` maps the SSH user to docker-cli."""
    r = cli(bed, "ps", host="byuser")
    assert r.returncode == 0, r.stderr
    mapped = [l for l in porthole_log(bed) if l.get("event") == "request" and "/containers/json" in l["target"]
              and l.get("client_rule") == "clients[0]"]
    assert mapped and mapped[-1]["profile"] == "docker-cli", porthole_log(bed)[-3:]


def test_a_daemon_that_is_down_is_a_docker_style_error(bed):
    r = cli(bed, "ps", host="down")
    assert r.returncode != 0
    assert "porthole: cannot reach the Docker daemon" in r.stderr, r.stderr


@pytest.mark.parametrize("use_ssh_client", [False, True], ids=["paramiko", "ssh-binary"])
def test_python_sdk_over_ssh(bed, monkeypatch, use_ssh_client):
    for key, value in bed.env().items():
        monkeypatch.setenv(key, value)
    client = docker.DockerClient(base_url=bed.url("cli"), use_ssh_client=use_ssh_client, timeout=30)
    try:
        assert client.ping()
        assert isinstance(client.containers.list(all=True), list)
        assert client.version()["ApiVersion"]
        with pytest.raises(docker.errors.APIError) as info:
            client.volumes.create()
        assert info.value.status_code == 403 and "porthole:" in (info.value.explanation or "")
    finally:
        client.close()


def test_a_killed_docker_events_leaves_no_session_behind(bed):
    """The CLI killed, its ssh sees its input close and nothing else: the stream ends and the
    forced command exits, though no event ever came."""
    def sessions() -> set:
        return {pid for pid, command in bed.user_processes().items() if "proxy.py" in command}

    before = sessions()  # (an SDK test's idle connection may still hold one)
    events = subprocess.Popen([support.DOCKER_CLI, "events"], env=bed.env({"DOCKER_HOST": bed.url("cli")}),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert support.wait_until(lambda: sessions() - before, 20)
        ours = sessions() - before
        time.sleep(1)  # the stream is under way
    finally:
        events.kill()
        events.wait(10)
    assert support.wait_until(lambda: not ours & sessions(), 20), bed.user_processes()
    ended = [l for l in porthole_log(bed) if l.get("event") == "request" and "/events" in l["target"]]
    assert ended and (ended[-1]["decision"], ended[-1]["ended"]) == ("allow", "client closed"), ended


def test_input_closed_during_a_stream_ends_the_session(bed):
    """ssh's input closes (its client went away without killing it): the stream ends and the
    session with it, as `docker system dial-stdio` and dockerd do, though no event ever came."""
    ssh = subprocess.Popen(["ssh", "-T", "cli"], env=bed.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)
    try:
        ssh.stdin.write(b"GET /events HTTP/1.1\r\nHost: docker\r\n\r\n")
        ssh.stdin.flush()
        assert ssh.stdout.read(12) == b"HTTP/1.1 200"
        ssh.stdin.close()
        assert ssh.wait(20) == 0
    finally:
        ssh.kill()
        ssh.wait(10)


def test_only_http_reaches_stdout_and_nothing_stderr(bed):
    """No --log-file and no syslog socket (or one): the log never reaches the SSH client."""
    request = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\nGET /version HTTP/1.1\r\nHost: docker\r\n\r\n"
    r = subprocess.run(["ssh", "-T", "nolog"], input=request, env=bed.env(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    assert r.stdout.startswith(b"HTTP/1.1 200 ") and r.stdout.count(b"HTTP/1.1 200 ") == 2, r.stdout
