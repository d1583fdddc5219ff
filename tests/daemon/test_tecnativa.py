"""The Tecnativa drop-in through the proxy process: --check prints the policy the variables made, a
write variable stops porthole with exit 2, an explicit rules file wins, and the running proxy in
front of the real daemon forwards what the variables open (checked with the docker CLI). (The
pure mapping: tests/unit/ops/test_tecnativa.py; the image: tests/artifacts/test_tecnativa_image.py.)"""
from __future__ import annotations

import os
import signal

import pytest

import support
from support import run_proxy


def test_check_prints_the_policy_the_variables_made():
    result = run_proxy("--check", env={"CONTAINERS": "1", "ALLOW_LOGS": "1", "IMAGES": "0"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "policy from the Tecnativa-style environment variables" in out
    assert "GET      /containers/{id}/logs  (any query)  [dangerous read, acknowledged]" in out
    assert "/images/json" not in out and "/info" not in out
    assert "note: CONTAINERS=1: GET /containers/{id}/top left out: it needs ALLOW_TOP=1 too" in out


@pytest.mark.parametrize("env, names", [
    ({"POST": "1"}, ["POST=1"]),
    ({"CONTAINERS": "1", "ALLOW_START": "1", "ALLOW_STOP": "1"}, ["ALLOW_START=1", "ALLOW_STOP=1"]),
    ({"BUILD": "1"}, ["BUILD=1"]),
])
def test_a_write_stops_porthole_with_exit_2(env, names):
    for mode in (["--check"], ["--listen", "tcp://127.0.0.1:%d" % support.free_port()]):
        result = run_proxy(*mode, env=env)
        assert result.returncode == 2, (mode, result.stdout, result.stderr)
        assert "porthole never forwards writes" in result.stderr
        for name in names:
            assert name in result.stderr


def test_an_explicit_rules_file_wins_over_the_variables():
    result = support.ProxyProcess(args=["--check"], as_root=True, env={"POST": "1", "CONTAINERS": "1"}).run(20)
    assert result.returncode == 0, result.stderr
    assert "profile log-reader" in result.stdout and "Tecnativa" not in result.stdout


def test_running_proxy_forwards_what_the_variables_open(proxy_factory, docker_direct, busybox_image, containers):
    """In front of the real daemon, with the docker CLI: allowed reads answer, the rest is refused,
    and SIGHUP keeps the environment's policy."""
    name = "ph-tecnativa-%d" % os.getpid()
    containers(busybox_image, name=name)
    url, path = support.unix_listen_url()
    p = proxy_factory(listen=[url], rules=False, env={"CONTAINERS": "1", "VERSION": "0"})
    host = "unix://" + path
    assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
    assert support.docker_cli(host, "inspect", "-f", "{{.Name}}", name, check=True).stdout.strip() == "/" + name
    for args, why in ((["images"], "no rule in profile 'default'"),
                      (["logs", name], "dangerous read"),
                      (["version"], "no rule in profile 'default'")):
        r = support.docker_cli(host, *args)
        assert r.returncode != 0 and "porthole:" in r.stderr and why in r.stderr, (args, r.stderr)
    p.proc.send_signal(signal.SIGHUP)  #: nothing to reload
    assert support.wait_until(lambda: "the policy comes from environment variables" in p.stderr_text(), 10)
    assert name in support.docker_cli(host, "ps", "--format", "{{.Names}}", check=True).stdout.split()
    assert support.docker_cli(host, "images").returncode != 0
