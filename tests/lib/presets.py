"""What the consumers of the shipped presets send (unit/core/test_presets.py replays it against
`decide`, daemon/test_presets.py through the proxy in front of the real dockerd).

CONSUMERS holds, per preset, the requests its consumer sends (read from the consumer's source and
the project's consumer survey; the rule comments in rules.json say where each comes from). They
are replayed in every spelling a client uses (unversioned and /v1.NN, both `filters` JSON shapes,
raw unencoded JSON). The table is also the yardstick for "nothing more": a preset's rules may
name exactly the paths, methods and query keys its consumer's requests use.
"""
from __future__ import annotations

import json
from urllib.parse import quote


class F(dict):
    """A `filters` value: {key: [values]}, rendered in the map or the list JSON shape."""

    def render(self, shape: str) -> str:
        if shape == "map":  # Go SDK: {"k":{"v":true}}
            return json.dumps({k: {v: True for v in vs} for k, vs in self.items()}, separators=(",", ":"))
        return json.dumps(dict(self), separators=(",", ":"))  # dockerode, bollard, curl: {"k":["v"]}


def req(path: str, method: str = "GET", **query):
    """One request of a consumer: `path` is the rule's template ({id}, {name*}, {name})."""
    return (method, path, {k.replace("__", "-"): v for k, v in query.items()})


PING = [req("/_ping", "HEAD"), req("/_ping")]
GO_DOCKER_SD = [req("/containers/json", filters=F(label=["prometheus.io/scrape=true"])),
                req("/containers/json", limit="0"), req("/networks")]

CONSUMERS = {
    "traefik": PING + [
        req("/version"), req("/containers/json", all="1"), req("/containers/json", all="1", limit="0"),
        req("/containers/{id}/json"), req("/events", filters=F(type=["container"])),
    ],
    "traefik-swarm": PING + [
        req("/version"), req("/services"), req("/networks", filters=F(scope=["swarm"])),
        req("/networks", filters=F(driver=["overlay"])),
        req("/tasks", filters=F(service=["web"], **{"desired-state": ["running"]})), req("/nodes/{id}"),
    ],
    "homepage": PING + [
        req("/containers/json", all="true"), req("/containers/{id}/json"),
        req("/containers/{id}/stats", stream="false"), req("/services", all="true"), req("/services/{id}"),
        req("/tasks", filters=F(service=["web"], **{"desired-state": ["running"]})),
    ],
    "dozzle": PING + [
        req("/info"), req("/version"), req("/containers/json", all="1", filters=F(label=["dozzle=1"])),
        req("/containers/json", all="1", limit="0"), req("/containers/{id}/json"),
        req("/containers/{id}/stats", stream="1"), req("/containers/{id}/stats", stream="true"),
        req("/containers/{id}/stats", stream="false", one__shot="true"),
        req("/containers/{id}/logs", follow="1", stdout="1", stderr="1", tail="100", timestamps="1",
            since="1761955200.950000000"),
        req("/containers/{id}/logs", stdout="1", stderr="1", timestamps="1", since="1700000000", until="1700000600"),
        req("/events"),
    ],
    "glances": PING + [
        req("/version"), req("/containers/json", limit="-1", all="1", size="0", trunc_cmd="0"),
        req("/containers/json", limit="-1", all="0", size="0", trunc_cmd="0", filters=F(status=["running"])),
        req("/containers/{id}/json"), req("/containers/{id}/stats", stream="True"),
        req("/containers/{id}/stats", stream="False", one__shot="True"), req("/images/{name*}/json"),
    ],
    "prometheus": PING + GO_DOCKER_SD,
    "prometheus-swarm": PING + [
        req("/services", filters=F(label=["prometheus.io/scrape=true"])), req("/services"),
        req("/tasks", filters=F(**{"desired-state": ["running"]})), req("/nodes", filters=F(role=["manager"])),
        req("/nodes"), req("/networks"), req("/containers/{id}/json"),
    ],
    "alloy": PING + GO_DOCKER_SD + [
        req("/containers/{id}/json"),
        req("/containers/{id}/logs", follow="1", stdout="1", stderr="1", timestamps="1", since="1700000000"),
    ],
    "uptime-kuma": PING + [req("/containers/json", all="true"), req("/containers/{id}/json")],
    "diun": PING + [
        req("/version"), req("/containers/json", filters=F(status=["running", "created", "exited"])),
        req("/containers/json", limit="0"), req("/containers/{id}/json"), req("/images/{name*}/json"),
        req("/services", filters=F(label=["diun.enable=true"])),
    ],
    "netdata": PING + [
        req("/info"), req("/containers/json", all="1", filters=F(health=["unhealthy"])),
        req("/containers/json", all="1", size="1", limit="0", filters=F(health=["none"])),
        req("/images/json"), req("/containers/{id}/json"),
    ],
    "cadvisor": PING + [req("/version"), req("/info"), req("/containers/{id}/json"), req("/images/json")],
    "crowdsec": PING + [
        req("/info"), req("/containers/json"), req("/containers/json", limit="0"), req("/containers/{id}/json"),
        req("/containers/{id}/logs", stdout="1", stderr="1", follow="1", since="1761955200.000000000"),
        req("/containers/{id}/logs", stdout="1", stderr="1", since="1700000000", until="1700000600"),
        req("/events", filters=F(type=["container", "service"])), req("/services"),
        req("/services/{id}", insertDefaults="false"), req("/services/{id}"),
        req("/services/{id}/logs", stdout="1", stderr="1", follow="1", since="1700000000", until="1700000600",
            timestamps="1", tail="10", details="1"),
    ],
    "vector": PING + [
        req("/version"), req("/events", since="1700000000", until="1800000000",
                             filters=F(type=["container"], label=["ship=1"], image=["busybox"])),
        req("/containers/json", all="false", limit="10", size="false",
            filters=F(label=["ship=1"], ancestor=["busybox"])),
        req("/containers/{id}/json"), req("/containers/{id}/json", size="false"),
        req("/containers/{id}/logs", follow="true", stdout="true", stderr="true", since="1700000000",
            until="0", timestamps="true", tail="all"),
    ],
    "fluent-bit": PING + [req("/events")],
    "compose": PING + [
        req("/version"), req("/info"),
        req("/containers/json", all="1", filters=F(label=["com.docker.compose.project=demo",
                                                          "com.docker.compose.oneoff=False"])),
        req("/containers/json", limit="-1", all="0", size="0", trunc_cmd="0",
            filters=F(label=["com.docker.compose.project=demo"])),
        req("/containers/{id}/json"), req("/images/{name*}/json"), req("/images/{name*}/json", manifests="1"),
        req("/images/{name*}/json", platform='{"architecture":"amd64","os":"linux"}'),
        req("/volumes/{name}"),  # docker-compose v1: a project's named volumes
    ],
    "docker-cli": PING + [
        req("/version"), req("/info"), req("/events", filters=F(type=["container"])),
        req("/events", since="1700000000", until="1700000001"),
        req("/containers/json"), req("/containers/json", all="1", size="1"), req("/containers/json", limit="3"),
        req("/containers/json", filters=F(status=["running"], label=["a=b"])),
        req("/containers/{id}/json"), req("/containers/{id}/json", size="1"),
        req("/containers/{id}/stats", stream="0"), req("/containers/{id}/stats", stream="false", one__shot="true"),
        req("/images/json"), req("/images/json", all="1", filters=F(dangling=["true"])),
        req("/images/json", manifests="1"), req("/images/json", shared__size="1", manifests="1", identity="1"),
        req("/images/{name*}/json"), req("/images/{name*}/json", manifests="1", platform="linux/amd64"),
        req("/images/{name*}/history"), req("/images/{name*}/history", platform='{"os":"linux"}'),
        req("/system/df"), req("/system/df", verbose="1"), req("/system/df", type="container"),
        req("/networks"), req("/networks", filters=F(driver=["bridge"])), req("/networks/{id}"),
        req("/networks/{id}", verbose="true", scope="local"),
        req("/volumes"), req("/volumes", filters=F(dangling=["true"])), req("/volumes/{name}"),
        req("/plugins"), req("/plugins", filters=F(enabled=["true"])), req("/plugins/{name*}/json"),
        req("/services", status="true"), req("/services", filters=F(label=["com.docker.stack.namespace"])),
        req("/services/{id}", insertDefaults="true"), req("/tasks", filters=F(service=["web"])), req("/tasks/{id}"),
        req("/nodes"), req("/nodes", filters=F(role=["manager"])), req("/nodes/{id}"),
        req("/secrets"), req("/secrets", filters=F(name=["db"])), req("/secrets/{id}"),
        req("/swarm"),  # docker swarm join-token, docker swarm ca
        # the Python SDK (docker-py): containers.list(), images.list()
        req("/containers/json", all="1", limit="-1", size="0", trunc_cmd="0"),
        req("/images/json", all="0", only_ids="0"),
        # Ansible's community.docker (docker_image_info, docker_host_info) and python-on-whales
        req("/images/json", all="0", only_ids="0", filters=F(reference=["porthole-test/busybox:latest"])),
        req("/networks", filters=F()),
    ],
    "zabbix": PING + [
        req("/info"), req("/containers/json", all="true"), req("/containers/json", all="false"),
        req("/containers/{id}/json"), req("/containers/{id}/stats", stream="false"), req("/images/json"),
        req("/system/df"),
    ],
}
PRESETS = list(CONSUMERS)
LOG_READER_DOCKER_LOGS = req("/containers/{id}/logs", follow="1", stdout="1", stderr="1", since="1700000000",
                             until="1800000000", timestamps="1", tail="10", details="1")
# The presets that may read logs, and what they acknowledge (the issue: Dozzle, Alloy, CrowdSec, Vector).
ACKNOWLEDGED = {
    "dozzle": {"/containers/{id}/logs"}, "alloy": {"/containers/{id}/logs"}, "vector": {"/containers/{id}/logs"},
    "crowdsec": {"/containers/{id}/logs", "/services/{id}/logs"},
    "log-reader": {"/containers/{id}/logs"},
}
SAMPLE = {"{id}": "c1", "{name*}": "porthole-test/busybox:latest", "{name}": "data"}


def render(path: str, query: dict, *, version: str | None, shape: str, raw_json: bool = False,
           values: dict = SAMPLE) -> str:
    for placeholder, value in values.items():
        path = path.replace(placeholder, value)
    parts = []
    for key, value in query.items():
        text = value.render(shape) if isinstance(value, F) else value
        parts.append(f"{key}={text if raw_json and isinstance(value, F) else quote(text, safe='')}")
    return (f"/v{version}" if version else "") + path + ("?" + "&".join(parts) if parts else "")


def spellings(path: str, query: dict) -> list[str]:
    """Every way the consumers spell one request: unversioned and versioned, both filters shapes."""
    shapes = ("map", "list") if any(isinstance(v, F) for v in query.values()) else ("map",)
    return [render(path, query, version=v, shape=s) for v in (None, "1.41", "1.44", "1.51") for s in shapes]
