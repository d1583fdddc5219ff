"""`env` redaction of image history and build steps, against the real daemon (issue "(2 of 5)",
item 1): images built by dockerd's classic builder (Debian's docker.io 20.10 with
DOCKER_BUILDKIT=0, FROM the suite's busybox image) with ENV, ARG defaults, --build-arg values and
an ONBUILD ENV, read through EVERY shipped profile of rules.json that allows a request carrying
them (image history, image and container inspect, /system/df), with the Python SDK, and through
the profiles the issue names with the real docker CLI: no secret value in any answer.

Before: /images/{name}/history (allowed by `monitoring` and `docker-cli`) answered
`/bin/sh -c #(nop)  ENV DB_PASSWORD=<value>` and `|1 BUILD_TOKEN=<value> /bin/sh -c ...`, and image
inspect's ContainerConfig.Cmd and OnBuild held the ONBUILD ENV value, while Config.Env was redacted."""
from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from pathlib import Path

import docker
import pytest

import support
from porthole.core.decide import RequestFacts, decide
from porthole.core.policy import load_policy
from porthole.core.target import Refusal

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

SHIPPED = json.loads((support.REPO / "rules.json").read_text())
PROFILES = sorted(SHIPPED["profiles"])


class Built:
    pass


def build(dockerd, tag, dockerfile, build_args):
    ctx = Path(tempfile.mkdtemp(prefix="ph-redact-"))
    try:
        (ctx / "Dockerfile").write_text(dockerfile)
        args = [a for name, value in build_args.items() for a in ("--build-arg", f"{name}={value}")]
        support.docker_cli(dockerd.url, "build", "--network", "none", "--rm", "--force-rm", *args, "-t", tag, str(ctx),
                           check=True, timeout=180, extra_env={"DOCKER_BUILDKIT": "0"})
    finally:
        shutil.rmtree(ctx, ignore_errors=True)


@pytest.fixture(scope="module")
def built(dockerd, busybox_image, docker_direct):
    b = Built()
    token = secrets.token_hex(6)
    # every value the images hold: none may leave porthole
    b.secrets = {name: f"S3CRET-{name}-{token}" for name in
                 ("build-token", "spaced-token", "defaulted", "db-password", "other", "legacy", "onbuild", "run-env")}
    s = b.secrets
    b.tag = f"ph-redact-{token}:1"  # a build argument without spaces: its name is kept in history
    b.spaced = f"ph-redact-{token}:spaced"  # one with a space: `|2 A=x y B=z` keeps no name
    dockerfile = (f"FROM {busybox_image}\n"
                  "ARG BUILD_TOKEN\n"
                  f"ARG DEFAULTED={s['defaulted']}\n"
                  f'ENV DB_PASSWORD={s["db-password"]} OTHER="two words {s["other"]}"\n'
                  f"ENV LEGACY {s['legacy']} and more\n"
                  "RUN echo $BUILD_TOKEN $DEFAULTED > /dev/null\n"
                  f"ONBUILD ENV ONB={s['onbuild']}\n")
    build(dockerd, b.tag, dockerfile, {"BUILD_TOKEN": s["build-token"]})
    build(dockerd, b.spaced, dockerfile, {"BUILD_TOKEN": f"x {s['spaced-token']}"})
    b.image_id = docker_direct.images.get(b.tag).id
    b.container = support.run_sleeper(docker_direct, b.tag, name=f"ph-redact-{token}",
                                      environment={"RUN_ENV": s["run-env"]})
    profiles = {name: support.free_port() for name in PROFILES}
    b.proxy = support.ProxyProcess(listen=[f"tcp://127.0.0.1:{port}?profile={name}" for name, port in profiles.items()],
                                   upstream=dockerd.url, groups=[dockerd.sock_gid],
                                   rules=support.write_rules(SHIPPED))
    with b.proxy.running():
        b.hosts = {name: f"tcp://127.0.0.1:{port}" for name, port in profiles.items()}
        b.direct = dockerd.url
        yield b
    b.container.remove(force=True)
    for tag in (b.tag, b.spaced):
        docker_direct.images.remove(tag, force=True)


def leaked(b, text):
    return [name for name, value in b.secrets.items() if value in text]


def allowed(profile, target):
    policy = load_policy(json.dumps(SHIPPED))
    try:
        decide(policy, RequestFacts("GET", target.encode(), (), "unix", profile))
    except Refusal:
        return False
    return True


def requests_of(b):
    """(name, what the SDK's low-level client calls, the request it makes)"""
    return [("history", lambda api: api.history(b.tag), f"/v1.41/images/{b.tag}/history"),
            ("history, spaced", lambda api: api.history(b.spaced), f"/v1.41/images/{b.spaced}/history"),
            ("history by ID", lambda api: api.history(b.image_id), f"/v1.41/images/{b.image_id}/history"),
            ("image inspect", lambda api: api.inspect_image(b.tag), f"/v1.41/images/{b.tag}/json"),
            ("image inspect, spaced", lambda api: api.inspect_image(b.spaced), f"/v1.41/images/{b.spaced}/json"),
            ("container inspect", lambda api: api.inspect_container(b.container.id),
             f"/v1.41/containers/{b.container.id}/json"),
            ("disk usage", lambda api: api.df(), "/v1.41/system/df")]


def test_the_secrets_are_really_in_the_daemons_answers(built):
    """Without porthole (and through a profile that redacts nothing) every value is there."""
    api = docker.APIClient(base_url=built.direct, version="1.41", timeout=30)
    try:
        raw = json.dumps([call(api) for _, call, _ in requests_of(built)])
    finally:
        api.close()
    assert leaked(built, raw) == list(built.secrets), raw[:2000]


@pytest.mark.parametrize("profile", PROFILES)
def test_no_shipped_profile_leaks_a_build_value(built, profile):
    api = docker.APIClient(base_url=built.hosts[profile], version="1.41", timeout=30)
    read = []
    try:
        for what, call, target in requests_of(built):
            if not allowed(profile, target):
                continue
            answer = json.dumps(call(api))
            assert not leaked(built, answer), (profile, what, leaked(built, answer), answer[:3000])
            read.append(what)
    finally:
        api.close()
    if profile in ("monitoring", "docker-cli"):  # the profiles the issue names: history and inspect
        assert {"history", "history by ID", "image inspect", "container inspect", "disk usage"} <= set(read), read


def test_history_keeps_the_names(built):
    api = docker.APIClient(base_url=built.hosts["monitoring"], version="1.41", timeout=30)
    try:
        steps = [step["CreatedBy"] for step in api.history(built.tag)]
        spaced = [step["CreatedBy"] for step in api.history(built.spaced)]
        image = api.inspect_image(built.tag)
    finally:
        api.close()
    assert "/bin/sh -c #(nop)  ENV DB_PASSWORD=" in steps and "/bin/sh -c #(nop)  ENV LEGACY=" in steps
    assert "/bin/sh -c #(nop)  ARG DEFAULTED=" in steps and "/bin/sh -c #(nop)  ARG BUILD_TOKEN" in steps
    assert "/bin/sh -c #(nop)  ONBUILD ENV ONB=" in steps
    # only the first build argument's name: a later NAME= may be a value's words (redact.py)
    assert "|2 BUILD_TOKEN= /bin/sh -c echo $BUILD_TOKEN $DEFAULTED > /dev/null" in steps
    assert "|2 BUILD_TOKEN= /bin/sh -c echo $BUILD_TOKEN $DEFAULTED > /dev/null" in spaced  # a value held a space
    assert image["Config"]["OnBuild"] == ["ENV ONB="]
    assert image["ContainerConfig"]["Cmd"] == ["/bin/sh", "-c", "#(nop) ", "ONBUILD ENV ONB="]
    assert sorted(image["Config"]["Env"]) == ["DB_PASSWORD=", "LEGACY=", "OTHER=", "PATH="]


@pytest.mark.parametrize("profile", ["monitoring", "docker-cli"])
def test_the_docker_cli_shows_no_build_value(built, profile):
    host = built.hosts[profile]
    history = support.docker_cli(host, "history", "--no-trunc", "--format", "{{.CreatedBy}}", built.tag, check=True).stdout
    assert not leaked(built, history) and "ENV DB_PASSWORD=" in history and "|2 BUILD_TOKEN= /bin/sh" in history
    for args in (["history", "--no-trunc", built.spaced], ["image", "inspect", built.tag], ["image", "inspect", built.spaced],
                 ["container", "inspect", built.container.name], ["system", "df", "-v"]):
        out = support.docker_cli(host, *args, check=True).stdout
        assert not leaked(built, out), (args, leaked(built, out))
    # the same commands straight to the daemon do show them (the test reads what it should)
    assert leaked(built, support.docker_cli(built.direct, "history", "--no-trunc", built.tag, check=True).stdout)


def test_the_sdks_high_level_objects_show_no_build_value(built):
    client = docker.DockerClient(base_url=built.hosts["docker-cli"], version="1.41", timeout=30)
    try:
        image = client.images.get(built.tag)
        seen = json.dumps([image.attrs, image.history(), client.containers.get(built.container.id).attrs, client.df()])
    finally:
        client.close()
    assert not leaked(built, seen), leaked(built, seen)
