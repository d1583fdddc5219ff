"""Zabbix agent 2's Docker plugin (Debian's zabbix-agent2 6.0) through porthole on a unix
listener (the plugin speaks to unix sockets only): first on the suite's recording profile,
then on the shipped `zabbix` preset. Each item of Zabbix's "Docker by Zabbix agent 2" template
is run once with the agent's test mode (`zabbix_agent2 -c CONF -t KEY`: one check, printed,
no service, nothing listening), with a config of the test's own whose
`Plugins.Docker.Endpoint` is porthole's listener."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

import consumers

pytestmark = [pytest.mark.docker, pytest.mark.timeout(120)]

ZABBIX_AGENT2 = "/usr/sbin/zabbix_agent2"
PRESET = "zabbix"

CONFIG = """\
LogType=console
PidFile={home}/zabbix_agent2.pid
ControlSocket={home}/agent.sock
ListenIP=127.0.0.1
ListenPort=10050
Server=127.0.0.1
ServerActive=
Hostname=porthole-test
Plugins.Docker.Endpoint={endpoint}
Plugins.Docker.Timeout=10
"""


@pytest.fixture
def world(containers, busybox_image):
    """A running container made on the DIRECT socket."""
    running = containers(busybox_image, name="ph-zabbix-" + uuid.uuid4().hex[:8])
    return {"container": running.name, "image": busybox_image}


def items(w: dict) -> list:
    """The template's items: ping, info, counts, discoveries, one container's info and stats."""
    name = "/" + w["container"]
    return ["docker.ping", "docker.info", "docker.containers", "docker.containers.discovery[true]",
            "docker.images", "docker.images.discovery", "docker.data_usage",
            "docker.container_info[%s]" % name, "docker.container_info[%s,full]" % name,
            "docker.container_stats[%s]" % name]


def run_items(docker_host: str, w: dict, tmp_path) -> dict:
    """{item key: its value} from one `zabbix_agent2 -t KEY` per item, all at once (each run
    takes a second, most of it the agent's own start-up)."""
    home = tmp_path / "zabbix"
    home.mkdir(exist_ok=True)
    config = home / "zabbix_agent2.conf"
    config.write_text(CONFIG.format(home=home, endpoint=docker_host))  # -t opens no port
    runs = {key: subprocess.Popen([ZABBIX_AGENT2, "-c", str(config), "-t", key], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for key in items(w)}
    values = {}
    for key, run in runs.items():
        stdout, stderr = run.communicate(timeout=30)
        # `KEY  [s|VALUE]` (KEY padded) on success, `KEY  [m|ZBX_NOTSUPPORTED] [why]` on failure
        shown = stdout.strip()
        value = shown[len(key):].strip() if shown.startswith(key) else ""
        assert run.returncode == 0 and value.startswith("[s|") and value.endswith("]"), \
            "zabbix_agent2 -t %s (%s):\n%s\n%s" % (key, run.returncode, stdout[-3000:], stderr)
        values[key] = value[3:-1]
    return values


def assert_values(values: dict, w: dict) -> None:
    """Each item answered from the daemon, with the world in it."""
    name = "/" + w["container"]
    assert values["docker.ping"] == "1"
    assert json.loads(values["docker.info"])["Containers"] >= 1
    assert name in [n for c in json.loads(values["docker.containers"]) for n in c["Names"]]
    discovered = json.loads(values["docker.containers.discovery[true]"])
    assert name in [c["{#NAME}"] for c in discovered], discovered
    assert w["image"] in [t for i in json.loads(values["docker.images"]) for t in i["RepoTags"] or []]
    assert w["image"] in [i["{#NAME}"] for i in json.loads(values["docker.images.discovery"])]
    assert "LayersSize" in json.loads(values["docker.data_usage"])
    assert json.loads(values["docker.container_info[%s]" % name])["State"]["Running"] is True
    assert json.loads(values["docker.container_info[%s,full]" % name])["Name"] == name
    assert "memory_stats" in json.loads(values["docker.container_stats[%s]" % name])


def test_zabbix_record(proxy_factory, world, tmp_path, record_property):
    url, docker_host = consumers.unix_listener(consumers.RECORD_PROFILE)
    proxy = proxy_factory(listen=[url], rules=consumers.record_rules_file())
    assert_values(run_items(docker_host, world, tmp_path), world)
    calls = consumers.stop_and_record(proxy)
    consumers.report("zabbix agent 2 docker plugin", calls, record_property)
    consumers.assert_all_allowed(proxy, "zabbix agent 2")
    for path in ("/_ping", "/info", "/containers/json", "/containers/{id}/json",
                 "/containers/{id}/stats", "/images/json", "/system/df"):
        consumers.assert_sent(calls, "GET", path)


def test_zabbix_preset(proxy_factory, world, tmp_path):
    url, docker_host = consumers.unix_listener(PRESET)
    proxy = proxy_factory(listen=[url])  # the shipped rules.json
    assert_values(run_items(docker_host, world, tmp_path), world)
    consumers.assert_all_allowed(proxy, "zabbix agent 2")
