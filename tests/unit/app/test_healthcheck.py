"""porthole/app/healthcheck.py: --healthcheck is lean (issue "(3 of 5)", item 1). proxy.py
starts it without loading the program: no h11, ssl, json, argparse, policy or doctor code for a
plain listener, ssl only for a TLS one. It still probes the first --listen/PORTHOLE_LISTEN, else
the state file's listener, else PID 1's (also under qemu), GETs /_ping through it and exits 0
only on 200, 1 with one line on stderr otherwise, 2 on wrong usage.

The listener is a thread of the test's on a unix socket or 127.0.0.1, answering what the test
says; the probe runs in-process, or as `python -S proxy.py` when what it imports matters."""
from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import support
import tls_certs
from porthole.app import healthcheck
from porthole.app.healthcheck import (MAX_ANSWER, first_listen_url, init_process_listener, main, own_arguments,
                                      probe, read_listener)
from porthole.runtime.config import Endpoint

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
REFUSED = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: 54\r\n"
           b"Connection: close\r\n\r\n" + b'{"message": "porthole: the daemon is not reachable"}\n  ')
# what the probe must never load for a plain listener: the program, the parsers it does not need
NOT_FOR_A_PLAIN_PROBE = {
    "h11", "ssl", "json", "argparse", "re", "enum", "typing", "dataclasses", "urllib.parse", "socket", "pathlib",
    "porthole.app.command_line", "porthole.app.settings", "porthole.app.wiring", "porthole.core",
    "porthole.core.policy", "porthole.ops", "porthole.ops.doctor", "porthole.ops.probe", "porthole.runtime.config",
    "porthole.runtime.tls", "porthole.runtime.log", "porthole.connections",
}


class Listener:
    """One of our listeners, as far as a probe can tell: it accepts, reads a request head, answers
    `answer` (then closes), `count` times. `received` holds the request heads."""

    def __init__(self, answer: bytes = OK, tls: ssl.SSLContext | None = None, tcp: bool = False,
                 count: int = 1) -> None:
        self.answer, self.tls, self.received = answer, tls, []
        if tcp or tls:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.url = "tcp://127.0.0.1:%d" % self.sock.getsockname()[1]
        else:
            self.path = str(support.short_tmpdir("ph-hc-") / "l.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(self.path)
            self.url = "unix://" + self.path
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, args=(count,), daemon=True)
        self.thread.start()

    def serve(self, count: int) -> None:
        for _ in range(count):
            conn, _ = self.sock.accept()
            try:
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
                conn.sendall(self.answer)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    made = []

    def make(*args, **kwargs) -> Listener:
        made.append(Listener(*args, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


def run_probe(*args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, set]:
    """`python -S -X importtime proxy.py ARGS`, as the image's HEALTHCHECK runs it (-S: no site,
    so what is imported is the probe's doing): (the process, the modules it imported)."""
    r = subprocess.run([sys.executable, "-S", "-X", "importtime", "proxy.py", *args], cwd=support.REPO,
                       env={"PATH": os.environ.get("PATH", ""), **(env or {})}, capture_output=True, text=True,
                       timeout=30)
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    r.stderr = "".join(line + "\n" for line in r.stderr.splitlines() if not line.startswith("import time:"))
    return r, imported


# ---- what it loads ---------------------------------------------------------------------------


def test_a_probe_of_a_plain_listener_loads_none_of_the_program(listener):
    served = listener()
    r, imported = run_probe("--healthcheck", "--listen", served.url + "?mode=0666")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "porthole.app.healthcheck" in imported
    assert imported & NOT_FOR_A_PLAIN_PROBE == set()
    assert served.received[0] == b"GET /_ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def test_a_failing_probe_loads_none_of_it_either():
    port = support.free_port()
    r, imported = run_probe("--healthcheck", env={"PORTHOLE_LISTEN": "tcp://0.0.0.0:%d" % port})
    assert r.returncode == 1
    assert r.stderr == "porthole healthcheck: tcp://0.0.0.0:%d: [Errno 111] Connection refused\n" % port
    assert imported & NOT_FOR_A_PLAIN_PROBE == set()


@pytest.fixture(scope="module")
def server_pair(pki):
    """The listener's certificate, signed for server and client use (so that the probe, which
    presents it on a mutual-TLS listener, is accepted)."""
    return tls_certs.make_leaf(pki.dir, "both", "localhost", (pki.ca, pki.dir / "ca-key.pem"),
                               "serverAuth,clientAuth", 20, san="IP:127.0.0.1")


@pytest.mark.parametrize("mutual", [False, True])
def test_a_probe_of_a_tls_listener_loads_ssl_and_no_more(listener, pki, server_pair, mutual):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(server_pair.cert), str(server_pair.key))
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(str(pki.ca))
    served = listener(tls=context)
    query = "tlscert=%s&tlskey=%s" % (server_pair.cert, server_pair.key) + ("&tlscacert=%s" % pki.ca if mutual else "")
    r, imported = run_probe("--healthcheck", "--listen", served.url + "?" + query)
    assert r.returncode == 0, r.stderr
    assert "ssl" in imported
    assert imported & (NOT_FOR_A_PLAIN_PROBE - {"ssl", "socket", "enum", "re"}) == set()
    assert served.received[0].startswith(b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")


def test_a_mutual_tls_listener_that_refuses_the_probe_fails_it(listener, pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server.cert), str(pki.server.key))  # serverAuth only: refused as a client's
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(pki.ca))
    served = listener(tls=context)
    url = pki.listen_url(int(served.url.rsplit(":", 1)[1]))
    assert probe(read_listener(url), None) == 1


def test_a_state_file_is_read_with_json(listener, tmp_path):
    served = listener()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": 1, "listen": [served.url, "tcp://127.0.0.1:1"]}))
    r, imported = run_probe("--healthcheck", "--state-file", str(state))
    assert r.returncode == 0, r.stderr
    assert "json" in imported and "h11" not in imported and "porthole.core.policy" not in imported


# ---- what it answers -------------------------------------------------------------------------


def test_only_a_200_passes(listener, capsys):
    assert probe(read_listener(listener(OK).url), None) == 0
    served = listener(REFUSED)
    assert probe(read_listener(served.url), None) == 1
    err = capsys.readouterr().err
    assert err == ("porthole healthcheck: %s: HTTP 502: {\"message\": \"porthole: the daemon is not reachable\"}\n  \n"
                   % served.url)


@pytest.mark.parametrize("answer, why", [
    (b"", "no complete answer head in 0 bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", "no complete answer head"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP answer: b'SSH-2.0-OpenSSH_9.2'"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP answer"),
    (b"HTTP/2 200\r\n\r\n", "not an HTTP answer"),
    (b"HTTP/1.1 200 OK" + b"x" * (2 * MAX_ANSWER), "no complete answer head in %d bytes" % MAX_ANSWER),
])
def test_what_is_not_an_answer_fails_in_one_line(listener, capsys, answer, why):
    served = listener(answer)
    assert probe(read_listener(served.url), None) == 1
    err = capsys.readouterr().err
    assert err.startswith("porthole healthcheck: %s: " % served.url) and why in err and err.count("\n") == 1, err


def test_a_listener_that_never_answers_times_out(monkeypatch, capsys):
    monkeypatch.setattr(healthcheck, "TIMEOUT", 0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        assert probe(read_listener("tcp://127.0.0.1:%d" % silent.getsockname()[1]), None) == 1
    assert "timed out" in capsys.readouterr().err


def test_a_listener_on_all_addresses_is_probed_on_loopback(listener):
    served = listener(tcp=True)
    port = served.url.rsplit(":", 1)[1]
    assert probe(read_listener("tcp://0.0.0.0:%s" % port), None) == 0
    assert served.received[0].startswith(b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")


# ---- its command line ------------------------------------------------------------------------


@pytest.mark.parametrize("args, read", [
    (["--healthcheck"], ([], None)),
    (["--healthcheck", "--listen", "tcp://h:1", "--listen=unix:///a", "--state-file", "/s"],
     (["tcp://h:1", "unix:///a"], "/s")),
    (["--state-file=/s", "--healthcheck", "--state-file", "/t"], ([], "/t")),
    (["--healthcheck", "--log-level", "debug"], None),  # anything else: the whole command line reads it
    (["--healthcheck", "--lis", "tcp://h:1"], None),
    (["--healthcheck", "--listen"], None),
    (["--healthcheck", "--listen", "-x"], None),
    (["--healthcheck=1"], None),
    (["--healthcheck", "--check"], None),
    (["-h", "--healthcheck"], None),
])
def test_its_own_arguments(args, read):
    assert own_arguments(args) == read


def test_the_whole_command_line_reads_the_rest(listener):
    served = listener()
    assert main(["--log-level", "debug", "--healthcheck", "--listen", served.url], {}) == 0


@pytest.mark.parametrize("args, env, message", [
    (["--healthcheck", "--listen", "ftp://x"], {}, "porthole: ftp://x: the scheme must be tcp:// or unix://\n"),
    (["--healthcheck"], {"PORTHOLE_LISTEN": "unix:///a.sock?mode=1000"},
     "porthole: unix:///a.sock?mode=1000: mode must be between 0000 and 0777\n"),
    (["--healthcheck", "--listen", "tcp://127.0.0.1:1", "--listen", "tcp://h"], {},
     "porthole: tcp://h: a tcp URL is tcp://HOST:PORT or tcp://[::1]:PORT\n"),
    (["--healthcheck", "--watch-rules", "nan"], {}, "porthole: --watch-rules must be 0 (off) or a number of seconds\n"),
])
def test_wrong_usage_exits_2(capsys, args, env, message):
    assert main(args, env) == 2
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("args", [["--healthcheck", "--bogus"], ["--healthcheck", "--check"], ["--healthcheck", "--listen"]])
def test_what_argparse_refuses_exits_2_as_always(args):
    r, _ = run_probe(*args)
    assert r.returncode == 2
    assert r.stderr.startswith("usage: porthole"), r.stderr


# ---- which listener -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, env, url", [
    (["--listen", "unix:///a.sock", "--listen", "tcp://h:1"], {}, "unix:///a.sock"),
    (["--rules", "/r.json", "--listen=tcp://h:1", "--allow-root"], {}, "tcp://h:1"),
    (["--log-level", "debug"], {"PORTHOLE_LISTEN": " , tcp://h:2 ,unix:///b"}, "tcp://h:2"),
    (["--watch-rules", "-0"], {}, "tcp://127.0.0.1:2375"),
    (["--lis", "tcp://h:1"], {}, None),  # an abbreviation: argparse reads it (app.settings)
    (["--liste=tcp://h:1"], {}, None),
])
def test_the_first_listener_of_a_running_porthole(args, env, url):
    assert first_listen_url(args, env) == url


@pytest.fixture
def program(tmp_path):
    """A file standing for the frozen executable, and a function writing PID 1's command line."""
    exe = tmp_path / "porthole"
    exe.write_bytes(b"")
    cmdline = tmp_path / "cmdline"

    def pid1(*argv: str) -> str:
        cmdline.write_bytes(b"".join(arg.encode() + b"\0" for arg in argv))
        return str(cmdline)

    return str(exe), pid1


@pytest.mark.parametrize("argv, env, url", [
    (["{exe}", "--listen", "unix:///run/porthole/docker.sock?mode=0666"], {}, "unix:///run/porthole/docker.sock?mode=0666"),
    (["{exe}"], {"PORTHOLE_LISTEN": "tcp://0.0.0.0:2376"}, "tcp://0.0.0.0:2376"),
    (["{exe}"], {}, "tcp://127.0.0.1:2375"),
    # an arm64 image on an amd64 host: PID 1 is qemu, the program follows it (twice, binfmt's P flag)
    (["/usr/bin/qemu-aarch64-static", "{exe}", "{exe}", "--listen", "tcp://0.0.0.0:2375"], {}, "tcp://0.0.0.0:2375"),
    (["/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "{exe}", "--listen=tcp://[::]:2375"], {}, "tcp://[::]:2375"),
    (["{exe}", "--lis", "tcp://0.0.0.0:9"], {}, "tcp://0.0.0.0:9"),  # read by app.settings, the same
    (["/bin/sleep", "--listen", "tcp://0.0.0.0:2375"], {}, None),  # PID 1 is another program
])
def test_pid_1s_first_listener(program, argv, env, url):
    exe, pid1 = program
    found = init_process_listener(pid1(*[arg.format(exe=exe) for arg in argv]), exe, env)
    assert (found.url if found is not None else None) == url
    if argv[1:2] == ["--lis"]:
        assert isinstance(found, Endpoint)


def test_not_frozen_there_is_no_pid_1_to_ask(program):
    exe, pid1 = program
    assert not getattr(sys, "frozen", False)
    assert init_process_listener(pid1(exe, "--listen", "tcp://h:1")) is None


def test_a_state_file_names_the_listener(listener, tmp_path, capsys):
    served = listener()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"pid": 7, "listen": [served.url]}))
    assert main(["--healthcheck"], {"PORTHOLE_STATE_FILE": str(state)}) == 0
    state.write_text("{}")
    assert main(["--healthcheck", "--state-file", str(state)], {}) == 1
    assert capsys.readouterr().err == "porthole healthcheck: cannot read %s: 'listen'\n" % state
    assert main(["--healthcheck", "--state-file", str(tmp_path / "none")], {}) == 1
    assert "cannot read %s: [Errno 2]" % (tmp_path / "none") in capsys.readouterr().err
