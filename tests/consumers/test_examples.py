"""The shipped examples and the JSON Schema say what the docs say they do."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def load_compose(name):
    return yaml.safe_load((EXAMPLES / name).read_text())


PRESET_FILES = sorted(str(path.relative_to(EXAMPLES)) for path in (EXAMPLES / "presets").glob("*.yml"))
BASE_PROFILES = {"default", "monitoring", "log-reader"}


@pytest.mark.parametrize("name", ["compose-traefik.yml", "compose-tcp.yml", *PRESET_FILES])
def test_compose_runs_porthole_hardened(name):
    porthole = load_compose(name)["services"]["porthole"]
    assert porthole["image"].startswith("porthole")
    assert porthole["read_only"] is True
    assert porthole["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in porthole["security_opt"]
    assert porthole["group_add"] and "DOCKER_GID" in porthole["group_add"][0]
    assert "ports" not in porthole, "the proxy must not be published on the host"
    assert "/var/run/docker.sock:/var/run/docker.sock" in porthole["volumes"]
    assert "privileged" not in porthole and "user" not in porthole  # the image's numeric user stays


def test_traefik_compose_shares_a_unix_socket_and_no_network():
    services = load_compose("compose-traefik.yml")["services"]
    porthole, traefik = services["porthole"], services["traefik"]
    assert porthole["network_mode"] == "none"
    listen = porthole["command"][porthole["command"].index("--listen") + 1]
    assert listen.startswith("unix:///run/porthole/docker.sock")
    assert "porthole-socket:/run/porthole" in porthole["volumes"]
    assert "porthole-socket:/run/porthole:ro" in traefik["volumes"]
    assert "--providers.docker.endpoint=unix:///run/porthole/docker.sock" in traefik["command"]
    assert "/var/run/docker.sock" not in " ".join(traefik["volumes"])


def test_every_preset_has_a_compose_snippet_that_uses_it():
    presets = set(json.loads((REPO / "rules.json").read_text())["profiles"]) - BASE_PROFILES
    assert {Path(name).stem for name in PRESET_FILES} == presets
    for name in PRESET_FILES:
        services = load_compose(name)["services"]
        listen = services["porthole"]["command"][services["porthole"]["command"].index("--listen") + 1]
        assert listen.startswith("unix:///run/porthole/docker.sock?"), name
        assert listen.endswith("&profile=" + Path(name).stem), name
        for consumer, service in services.items():
            if consumer == "porthole":
                continue
            assert "/var/run/docker.sock" not in json.dumps(service), (name, consumer)
            assert "porthole-socket:/run/porthole:ro" in service["volumes"], (name, consumer)
            assert "/run/porthole/docker.sock" in (EXAMPLES / name).read_text()


def test_tcp_compose_uses_an_internal_network():
    compose = load_compose("compose-tcp.yml")
    assert compose["networks"]["docker-api"]["internal"] is True
    assert compose["services"]["porthole"]["networks"] == ["docker-api"]
    assert "--providers.docker.endpoint=tcp://porthole:2375" in compose["services"]["traefik"]["command"]


def test_systemd_unit_is_hardened_and_valid(tmp_path):
    text = (EXAMPLES / "porthole.service").read_text()
    for directive in ("DynamicUser=yes", "SupplementaryGroups=docker", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "PrivateTmp=yes",
                      "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "IPAddressDeny=any"):
        assert directive in text, directive
    # the onefile executable unpacks into /tmp and runs from there
    assert not re.search(r"^NoExecPaths=", text, re.M)
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is installed by ./build.sh deps"
    unit = tmp_path / "porthole.service"
    unit.write_text(text.replace("/usr/local/bin/porthole", shutil.which("true")))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "porthole.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


# ---- rules.schema.json ------------------------------------------------------------------------

SCHEMA = json.loads((REPO / "rules.schema.json").read_text())


def test_schema_accepts_the_shipped_rules():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(json.loads((REPO / "rules.json").read_text()), SCHEMA)


@pytest.mark.parametrize("rule", [
    {"method": "POST", "path": "/containers/create"},
    {"method": ["GET", "DELETE"], "path": "/_ping"},
    {"method": "GET", "path": "/containers/.*/json"},
    {"method": "GET", "path": "containers/json"},
    {"method": "GET", "path": "/_ping", "regex": "x"},
    {"method": "GET", "path": "/_ping", "dangerous": "yes"},
    {"method": "GET", "path": "/_ping", "query": {"a": []}},
    {"method": "GET"},
])
def test_schema_refuses_what_the_validator_refuses(rule):
    document = {"version": 1, "profiles": {"default": {"rules": [rule]}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, SCHEMA)
