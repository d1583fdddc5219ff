"""Ansible's `community.docker` collection (Debian's `ansible` 7.7: community.docker 3.4, run by
/usr/bin/python3 with Debian's python3-requests) reading the daemon through porthole: the
`*_info` modules in one playbook run, and the `docker_containers` inventory plugin. First on
the suite's recording profile (what do they send?), then on the shipped `docker-cli` preset,
which covers every request they make.

`docker_swarm_info` asks `GET /swarm` (is this daemon a manager?): refused by `docker-cli`
today; its test expects the answer it gives once that read is allowed with the swarm join
tokens redacted (the daemon here is no swarm: `docker_swarm_active` false)."""

from __future__ import annotations

import json
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

import consumers

pytestmark = [pytest.mark.docker, pytest.mark.timeout(150)]

ANSIBLE_PLAYBOOK = "/usr/bin/ansible-playbook"
ANSIBLE_INVENTORY = "/usr/bin/ansible-inventory"
PRESET = "docker-cli"

PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  vars:
    host: "{{ lookup('env', 'PORTHOLE_TEST_DOCKER_HOST') }}"
  tasks:
    - name: host
      community.docker.docker_host_info:
        docker_host: "{{ host }}"
        containers: true
        containers_all: true
        images: true
        volumes: true
        networks: true
        disk_usage: true
    - name: container
      community.docker.docker_container_info:
        docker_host: "{{ host }}"
        name: "%(container)s"
    - name: image
      community.docker.docker_image_info:
        docker_host: "{{ host }}"
        name: ["%(image)s"]
    - name: network
      community.docker.docker_network_info:
        docker_host: "{{ host }}"
        name: none
    - name: volume
      community.docker.docker_volume_info:
        docker_host: "{{ host }}"
        name: "%(volume)s"
"""

SWARM_PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: swarm
      community.docker.docker_swarm_info:
        docker_host: "{{ lookup('env', 'PORTHOLE_TEST_DOCKER_HOST') }}"
      ignore_errors: true
"""

INVENTORY = """\
plugin: community.docker.docker_containers
docker_host: %s
verbose_output: true
"""


@pytest.fixture
def world(containers, docker_direct, busybox_image):
    """A running container and a volume, made on the DIRECT socket."""
    run = uuid.uuid4().hex[:8]
    running = containers(busybox_image, name="ph-ansible-" + run)
    volume = docker_direct.volumes.create("ph-ansible-vol-" + run)
    try:
        yield {"container": running.name, "image": busybox_image, "volume": volume.name}
    finally:
        volume.remove(force=True)


def ansible_env(tmp_path, docker_host: str) -> dict:
    """Ansible on its own (run it in tmp_path: no ./ansible.cfg): a temp home, no colours,
    modules on Debian's python3, results as JSON."""
    home = tmp_path / "ansible-home"
    home.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3", "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false", "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_STDOUT_CALLBACK": "json", "PORTHOLE_TEST_DOCKER_HOST": docker_host}


def run_playbook(text: str, tmp_path, docker_host: str) -> dict:
    """Run a playbook; returns {task name: its result} (the json callback's output)."""
    playbook = tmp_path / ("play-%s.yml" % uuid.uuid4().hex[:6])
    playbook.write_text(text)
    r = subprocess.run([ANSIBLE_PLAYBOOK, "-i", "localhost,", str(playbook)],
                       env=ansible_env(tmp_path, docker_host), cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "ansible-playbook exited %s:\n%s\n%s" % (r.returncode, r.stdout[-6000:], r.stderr[-3000:])
    tasks = json.loads(r.stdout)["plays"][0]["tasks"]
    return {t["task"]["name"]: t["hosts"]["localhost"] for t in tasks}


def info_playbook(w: dict) -> str:
    return PLAYBOOK % {"container": w["container"], "image": w["image"], "volume": w["volume"]}


def assert_info(results: dict, w: dict) -> None:
    """Every module answered, from the daemon, with the world in it."""
    for name, result in results.items():
        assert not result.get("failed"), "%s failed: %s" % (name, result.get("msg"))
    host = results["host"]
    assert host["host_info"]["Containers"] >= 1
    assert any("/" + w["container"] in c["Names"] for c in host["containers"]), host["containers"]
    assert any(w["image"] in (i.get("RepoTags") or []) for i in host["images"]), host["images"]
    assert any(v["Name"] == w["volume"] for v in host["volumes"]), host["volumes"]
    assert any(n["Name"] == "none" for n in host["networks"]), host["networks"]
    assert "LayersSize" in host["disk_usage"], host["disk_usage"]
    container = results["container"]
    assert container["exists"] is True and container["container"]["Name"] == "/" + w["container"]
    assert container["container"]["State"]["Running"] is True
    assert [w["image"]] == results["image"]["images"][0]["RepoTags"]
    assert results["network"]["exists"] is True and results["network"]["network"]["Name"] == "none"
    assert results["volume"]["exists"] is True and results["volume"]["volume"]["Name"] == w["volume"]


def run_inventory(tmp_path, docker_host: str) -> dict:
    """`ansible-inventory --list` of the docker_containers plugin."""
    inventory = tmp_path / "inventory.docker.yml"
    inventory.write_text(INVENTORY % docker_host)
    r = subprocess.run([ANSIBLE_INVENTORY, "-i", str(inventory), "--list"],
                       env=ansible_env(tmp_path, docker_host), cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "ansible-inventory exited %s:\n%s" % (r.returncode, r.stderr[-3000:])
    assert "Failed to parse" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def assert_inventory(inventory: dict, w: dict) -> None:
    """The container is a host, with its state from inspect among its variables
    (verbose_output: the plugin inspects each container)."""
    hostvars = inventory["_meta"]["hostvars"]
    assert w["container"] in hostvars, sorted(hostvars)
    facts = hostvars[w["container"]]
    assert facts["docker_state"]["Running"] is True, facts
    assert facts["ansible_connection"] == "community.docker.docker_api"


def run_both(w: dict, tmp_path, docker_host: str) -> None:
    """The playbook and the inventory at once (each is seconds of Ansible's start-up)."""
    with ThreadPoolExecutor(2) as pool:
        inventory = pool.submit(run_inventory, tmp_path, docker_host)
        assert_info(run_playbook(info_playbook(w), tmp_path, docker_host), w)
        assert_inventory(inventory.result(), w)


def test_ansible_record(proxy_factory, world, tmp_path, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    run_both(world, tmp_path, docker_host)
    calls = consumers.stop_and_record(proxy)
    consumers.report("ansible community.docker", calls, record_property)
    consumers.assert_all_allowed(proxy, "ansible")
    for path in ("/info", "/containers/json", "/containers/{id}/json", "/images/json", "/volumes",
                 "/networks", "/system/df"):
        consumers.assert_sent(calls, "GET", path)


def test_ansible_preset(proxy_factory, world, tmp_path):
    url, docker_host = consumers.unix_listener(PRESET)
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    run_both(world, tmp_path, docker_host)
    consumers.assert_all_allowed(proxy, "ansible")


def test_ansible_swarm_info_preset(proxy_factory, tmp_path):
    """On a daemon that is no swarm, docker_swarm_info fails as it does on the daemon itself
    ("must run on swarm manager node", docker_swarm_active false): its `GET /swarm` must reach
    the daemon (which answers 503, not a manager) rather than be refused by porthole."""
    url, docker_host = consumers.unix_listener(PRESET)
    proxy = proxy_factory(listen=[url])
    result = run_playbook(SWARM_PLAYBOOK, tmp_path, docker_host)["swarm"]
    assert result["can_talk_to_docker"] is True
    assert result["docker_swarm_active"] is False and result["docker_swarm_manager"] is False
    assert "must run on swarm manager node" in result["msg"], result["msg"]
    consumers.stop(proxy)
    swarm = [l for l in proxy.requests_logged() if l["target"].split("?")[0].endswith("/swarm")]
    assert swarm, "docker_swarm_info sent no GET /swarm"
    assert [(l["decision"], l["status"]) for l in swarm] == [("allow", 503)] * len(swarm), swarm
    consumers.assert_sent(consumers.recorded(proxy), "GET", "/info")
