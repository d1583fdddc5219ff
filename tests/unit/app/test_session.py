"""porthole/app/session.py: --stdio in-process: a StdioProxy on pipes, a fake clock and a unix
socket the test serves as the daemon; session_facts (the SSH user, SSH_CONNECTION)."""
from __future__ import annotations

import io
import json
import os
import pwd

import pytest
from parts import Daemon, FakeClock, parse_responses, read_available, read_pipe, close_fds

from porthole.app.session import StdioProxy, session_facts
from porthole.app.settings import parse_settings
from porthole.core.clients import ClientFacts
from porthole.core.policy import load_policy
from porthole.runtime.log import Log

POLICY = load_policy(json.dumps({"version": 1, "profiles": {
    "default": {"rules": [{"method": "GET", "path": "/_ping"}]},
    "ops": {"rules": [{"method": "GET", "path": "/_ping"}, {"method": "GET", "path": "/info"},
                      {"method": "GET", "path": "/events"}]}},
    "clients": [{"match": {"ssh_user": pwd.getpwuid(os.getuid()).pw_name}, "profile": "ops"}]}))
PING = b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n"
SSH = {"SSH_CONNECTION": "192.0.2.7 40022 192.0.2.1 22", "SSH_ORIGINAL_COMMAND": "docker system dial-stdio"}


class Session:
    def __init__(self, tmp_path, environ, *args: str) -> None:
        self.daemon = Daemon(str(tmp_path / "d.sock"))
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        os.set_blocking(self.stdout_r, False)
        self.stream = io.StringIO()
        settings = parse_settings(["--stdio", "--upstream", f"unix://{tmp_path}/d.sock", "--watch-rules", "0",
                                   *args], {})
        self.proxy = StdioProxy(settings, POLICY, Log("json", "debug", self.stream), environ,
                                self.stdin_r, self.stdout_w, FakeClock())
        self.proxy.bind()

    def run(self, passes: int = 10) -> None:
        for _ in range(passes):
            if self.proxy.ended:
                return
            self.proxy.run_pass(0)

    def stdout(self) -> tuple[bytes, bool]:
        return read_pipe(self.stdout_r)

    def logs(self) -> list[dict]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def close(self) -> None:
        if self.proxy.signals is not None:
            self.proxy.signals.close()
        self.proxy.loop.selector.close()
        self.daemon.close()
        close_fds(self.stdin_w, self.stdout_r)


@pytest.fixture
def session(tmp_path):
    made = []

    def make(environ=None, *args):
        made.append(Session(tmp_path, SSH if environ is None else environ, *args))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_input_ending_before_the_answer_still_gets_it(session):
    """Rule 2: stdin's EOF right after the request (printf ... | porthole --stdio) does not cut
    the answer; once it is delivered the session ends."""
    s = session()
    os.write(s.stdin_w, PING)
    os.close(s.stdin_w)
    s.run()
    upstream = s.daemon.accept()
    request, _ = read_available(upstream)
    assert request.startswith(b"GET /_ping HTTP/1.1\r\n")
    s.run()
    assert not s.proxy.ended
    upstream.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
    s.run(30)
    data, eof = s.stdout()
    assert eof and [(r["status"], bytes(r["body"]), r["complete"]) for r in parse_responses(data)] == [(200, b"OK", True)]
    assert s.proxy.ended
    assert s.proxy.wind_down("test") == 0
    request_line = next(l for l in s.logs() if l["event"] == "request")
    assert (request_line["status"], request_line["decision"], request_line["ended"]) == (200, "allow", "complete")


def test_the_ssh_user_picks_the_profile_and_is_logged(session):
    s = session()
    user = pwd.getpwuid(os.getuid()).pw_name
    assert (s.proxy.session.profile, s.proxy.session.client_rule.label) == ("ops", "clients[0]")
    start = next(l for l in s.logs() if l["event"] == "stdio_session")
    assert (start["ssh_user"], start["ssh_connection"], start["ssh_command"]) == (
        user, SSH["SSH_CONNECTION"], "docker system dial-stdio")
    assert start["client"] == f"ssh {user}@192.0.2.7:40022"
    os.write(s.stdin_w, b"GET /containers/json HTTP/1.1\r\nHost: x\r\n\r\n")
    s.run()
    data, _ = s.stdout()
    (refusal,) = parse_responses(data)
    assert refusal["status"] == 403 and b"profile 'ops'" in refusal["body"]


def test_without_sshd_the_profile_is_the_command_lines(session):
    s = session({}, "--profile", "default")
    assert (s.proxy.session.profile, s.proxy.session.client_rule) == ("default", None)


def test_stdout_closing_ends_the_session(session):
    """The SSH session went away while the client waited: the client connection is closed, the
    exchange logged as cut by its client."""
    s = session()
    os.write(s.stdin_w, PING)
    s.run()
    s.daemon.accept()
    os.close(s.stdout_r)
    s.run(30)
    assert s.proxy.ended
    request_line = next(l for l in s.logs() if l["event"] == "request")
    assert request_line["ended"] == "client closed"


def test_session_facts():
    user = pwd.getpwuid(os.getuid()).pw_name
    facts, peer, fields = session_facts({"SSH_CONNECTION": "::1 5000 ::1 22"})
    assert facts == ClientFacts(ssh_user=user) and peer == f"ssh {user}@[::1]:5000"
    assert fields["ssh_command"] is None
    facts, peer, fields = session_facts({"USER": "root", "LOGNAME": "root"}, uid=4242)
    assert facts == ClientFacts() and peer == "stdio uid=4242" and fields["ssh_user"] is None
    facts, peer, _ = session_facts({"SSH_CONNECTION": "192.0.2.7 1 192.0.2.1 22", "USER": "root"}, uid=2**31 - 5)
    assert facts == ClientFacts(ssh_user=None) and peer == f"ssh uid={2**31 - 5}@192.0.2.7:1"  # $USER is not trusted


def test_input_ending_during_a_stream_ends_it(session):
    """Rule 2: a killed `docker events` leaves ssh's input closed and nothing else: the stream ends
    as when its client leaves (as dial-stdio and dockerd do), and the session with it."""
    s = session()
    os.write(s.stdin_w, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    s.run()
    upstream = s.daemon.accept()
    read_available(upstream)
    upstream.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\n{}\n\r\n")
    s.run()
    data, _ = s.stdout()
    assert data.startswith(b"HTTP/1.1 200 ") and not s.proxy.ended
    os.close(s.stdin_w)
    s.run(30)
    assert s.proxy.ended
    s.proxy.wind_down("test")
    line = next(l for l in s.logs() if l["event"] == "request")
    assert (line["decision"], line["ended"], line["status"]) == ("allow", "client closed", 200)
