"""`env` redaction of what Podman recorded, against a real private Podman service (Debian's
podman 4.3, tests/test_podman.py's fixture) (issue "(2 of 5)", item 1):

- libpod container inspect's Config.CreateCommand: `podman run -e POD_SECRET=... --env X=...
  --env=X=... -eX=...` as typed;
- libpod image inspect's History[].created_by, and image history (libpod's and the compat API's):
  what Buildah wrote for `podman build` (`/bin/sh -c #(nop) ENV A="two words"`, `ENV K legacy`,
  `|1 BUILD_TOKEN=... /bin/sh -c ...`);
- /libpod/generate/{name}/systemd (a unit with the create command in it) fails closed.

Read through every shipped profile of rules.json that allows one of these requests, and through
`libpod-reader`, a profile these tests add for the libpod reads no preset allows; with the real
`podman --remote` for the `podman` preset."""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import fake_upstream as fu
import support
from porthole.core.decide import RequestFacts, decide
from porthole.core.policy import load_policy
from porthole.core.target import Refusal

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

LIBPOD = "/v4.3.1/libpod"
RULES = json.loads((support.REPO / "rules.json").read_text())
RULES["profiles"]["libpod-reader"] = {"extends": "podman", "rules": [
    {"method": "GET", "path": "/libpod/images/{name*}/history"},
    {"method": "GET", "path": "/libpod/generate/{name}/systemd"},
    {"method": "GET", "path": "/images/{name*}/history"}]}
PROFILES = sorted(RULES["profiles"])


class World:
    pass


@pytest.fixture(scope="module")
def world(podman):
    w = World()
    token = secrets.token_hex(6)
    w.secrets = {name: f"S3CRET-{name}-{token}" for name in
                 ("pod-secret", "env", "env-equals", "env-glued", "build-token", "db-password", "other", "legacy")}
    s = w.secrets
    ctx = Path(tempfile.mkdtemp(prefix="ph-redact-"))
    try:
        (ctx / "Containerfile").write_text(
            f"FROM {podman.image}\n"
            "ARG BUILD_TOKEN\n"
            f'ENV DB_PASSWORD={s["db-password"]} OTHER="two words {s["other"]}"\n'
            f"ENV LEGACY {s['legacy']} value\n"
            "RUN echo $BUILD_TOKEN > /dev/null\n")
        podman.cli("build", "--network", "none", "--build-arg", f"BUILD_TOKEN={s['build-token']}",
                   "-t", f"localhost/ph-redact-{token}:1", str(ctx), timeout=300)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    w.image = f"localhost/ph-redact-{token}:1"
    w.image_id = podman.cli("image", "inspect", "--format", "{{.Id}}", w.image).stdout.strip()
    w.name = f"ph-redact-{token}"
    podman.cli("run", "-d", "--network", "none", "-e", f"POD_SECRET={s['pod-secret']}", "--env", f"X2={s['env']}",
               f"--env=X3={s['env-equals']}", f"-eX4={s['env-glued']}", "--name", w.name, w.image, "sleep", "600")
    ports = {name: support.free_port() for name in PROFILES}
    w.proxy = support.ProxyProcess(listen=[f"tcp://127.0.0.1:{port}?profile={name}" for name, port in ports.items()],
                                   upstream=podman.url, groups=[support.DEFAULT_SOCK_GID], rules=support.write_rules(RULES))
    unix_url, w.unix_path = support.unix_listen_url("podman.sock", "mode=0660&profile=podman")
    w.proxy.listen.append(unix_url)
    with w.proxy.running():
        w.addresses = {name: ("127.0.0.1", port) for name, port in ports.items()}
        w.direct = "unix://" + podman.socket_path
        yield w
    podman.cli("rm", "--force", "--time", "0", w.name, check=False)
    podman.cli("rmi", "--force", w.image, check=False)


def leaked(w, text):
    return [name for name, value in w.secrets.items() if value in text]


def allowed(profile, target):
    try:
        decide(load_policy(json.dumps(RULES)), RequestFacts("GET", target.encode(), (), "unix", profile))
    except Refusal:
        return False
    return True


def targets(w):
    return [f"{LIBPOD}/containers/{w.name}/json", f"{LIBPOD}/images/{w.image_id}/json",
            f"{LIBPOD}/images/{w.image_id}/history", f"/v1.41/images/{w.image}/history",
            f"/v1.41/images/{w.image_id}/json", f"/v1.41/containers/{w.name}/json"]


def test_the_secrets_are_really_in_podmans_answers(world):
    raw = "".join(fu.get(world.direct, target).body.decode() for target in targets(world))
    assert leaked(world, raw) == list(world.secrets)


@pytest.mark.parametrize("profile", PROFILES)
def test_no_profile_leaks_what_podman_recorded(world, profile):
    read = []
    for target in targets(world):
        if allowed(profile, target):
            r = fu.get(world.addresses[profile], target)
            assert r.status == 200, (profile, target, r.status, r.body[:300])
            assert not leaked(world, r.body.decode()), (profile, target, leaked(world, r.body.decode()))
            read.append(target)
    if profile == "podman":
        assert read[:2] == targets(world)[:2]  # libpod container and image inspect
    if profile == "libpod-reader":
        assert len(read) == len(targets(world))


def test_create_command_and_history_keep_names(world):
    address = world.addresses["podman"]
    config = fu.get(address, f"{LIBPOD}/containers/{world.name}/json").json()["Config"]
    command = config["CreateCommand"]
    assert command[command.index("-e") + 1] == "POD_SECRET=" and "--env=X3=" in command and "-eX4=" in command
    assert command[command.index("--env") + 1] == "X2=" and command[-2:] == ["sleep", "600"]
    history = [step.get("created_by", "") for step in fu.get(address, f"{LIBPOD}/images/{world.image_id}/json").json()["History"]]
    assert "/bin/sh -c #(nop) ENV DB_PASSWORD=" in history and "/bin/sh -c #(nop) ENV LEGACY=" in history
    assert "|1 BUILD_TOKEN= /bin/sh -c echo $BUILD_TOKEN > /dev/null" in history


def test_generated_systemd_units_fail_closed(world):
    r = fu.get(world.addresses["libpod-reader"], f"{LIBPOD}/generate/{world.name}/systemd?new=true")
    assert r.status == 502 and not leaked(world, r.body.decode()), r.body[:300]
    assert leaked(world, fu.get(world.direct, f"{LIBPOD}/generate/{world.name}/systemd?new=true").body.decode())


def podman_remote(url, *args):
    return subprocess.run([support.PODMAN, "--remote", "--url", url, *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"})


def test_podman_remote_inspect_shows_no_value(world):
    url = "unix://" + world.unix_path
    for args in (["inspect", world.name], ["image", "inspect", world.image_id]):
        r = podman_remote(url, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert not leaked(world, r.stdout), (args, leaked(world, r.stdout))
    assert "POD_SECRET=" in podman_remote(url, "inspect", "--format", "{{json .Config.CreateCommand}}", world.name).stdout
