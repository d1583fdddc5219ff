"""`env` redaction of the text the daemon recorded (issue "(2 of 5)", item 1): an image's build
history (`/images/{name}/history`'s CreatedBy, libpod's History[].created_by), the Cmd and ONBUILD
triggers the classic builder keeps in an image's config, Podman's CreateCommand (`podman run -e
SECRET=...`) in container and pod inspect, BuildKit's build-cache descriptions in /system/df, a
swarm plugin task's env, and the libpod answers that were not filtered at all (generated kube
YAML and systemd units, libpod volumes).

The CreatedBy strings are the ones dockerd 20.10's classic builder and Podman 4.3's Buildah wrote
for tests/daemon/test_redaction_builds.py's Containerfile, and BuildKit's forms from
dockerfile2llb (convert.go: dispatchEnv, dispatchArg, runCommandString, commitToHistory)."""
from __future__ import annotations

import copy
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from porthole.core.objects import Filtering, REDACTIONS
from porthole.core.rewrite import TransformError
from porthole.core.filters import ResponseFilter, classify_for_filter, plan_response_filter
from porthole.core.target import canonicalize_target

SECRET = "hunter2-SECRET"


def redact_build_step(text):  # (imported here: the module is new, the answers' tests run on any commit)
    from porthole.core.redact import redact_build_step
    return redact_build_step(text)


def redact_build_cmd(cmd):
    from porthole.core.redact import redact_build_cmd
    return redact_build_cmd(cmd)


def redact_create_command(args, kinds):
    from porthole.core.redact import redact_create_command
    return redact_create_command(args, kinds)


# ---------------------------------------------------------------------------------------------
# CreatedBy, by example

@pytest.mark.parametrize("created_by, redacted", [
    # dockerd's classic builder (DOCKER_BUILDKIT=0), as recorded from dockerd 20.10
    ("/bin/sh -c #(nop)  ENV DB_PASSWORD=hunter2", "/bin/sh -c #(nop)  ENV DB_PASSWORD="),
    ("/bin/sh -c #(nop)  ENV DB_PASSWORD=hunter2 OTHER=two words", "/bin/sh -c #(nop)  ENV DB_PASSWORD="),
    ("/bin/sh -c #(nop)  ENV LEGACY=legacy value", "/bin/sh -c #(nop)  ENV LEGACY="),
    ("/bin/sh -c #(nop)  ARG DEFAULTED=def-secret", "/bin/sh -c #(nop)  ARG DEFAULTED="),
    ("/bin/sh -c #(nop)  ARG BUILD_TOKEN", "/bin/sh -c #(nop)  ARG BUILD_TOKEN"),
    ("/bin/sh -c #(nop)  ARG A B=x C", "/bin/sh -c #(nop)  ARG A B="),
    ("/bin/sh -c #(nop)  ONBUILD ENV ONB=onbuild-secret", "/bin/sh -c #(nop)  ONBUILD ENV ONB="),
    ("|1 BUILD_TOKEN=tok /bin/sh -c make", "|1 BUILD_TOKEN= /bin/sh -c make"),
    ("|2 A=x B=y /bin/sh -c echo $A", "|2 A= /bin/sh -c echo $A"),  # a later NAME= may be a value's
    # a value with a space: N words no longer are N arguments, so no name is certain
    ("|2 BUILD_TOKEN=tok en DEFAULTED=def-secret /bin/sh -c echo $BUILD_TOKEN > /dev/null",
     "|2 BUILD_TOKEN= /bin/sh -c echo $BUILD_TOKEN > /dev/null"),
    # another SHELL: `#(nop)` still marks the instruction
    ("/bin/bash -o pipefail -c #(nop)  ENV K=v", "/bin/bash -o pipefail -c #(nop)  ENV K="),
    # BuildKit
    ("ENV K=V", "ENV K="), ("ENV K=V K2=V2", "ENV K="), ("ARG VERSION=1.2 TOKEN=tok", "ARG VERSION="),
    ("RUN |1 K=V /bin/sh -c make # buildkit", "RUN |1 K= /bin/sh -c make # buildkit"),
    ("RUN |1 K=V make install # buildkit", "RUN |1"),  # exec form: the command cannot be told from V
    ("RUN /bin/sh -c make # buildkit", "RUN /bin/sh -c make # buildkit"),
    # Buildah (podman build), as recorded from Podman 4.3: the Containerfile's own words
    ('/bin/sh -c #(nop) ENV DB_PASSWORD=hunter2 OTHER="two words"', "/bin/sh -c #(nop) ENV DB_PASSWORD="),
    ("/bin/sh -c #(nop) ENV LEGACY legacy value", "/bin/sh -c #(nop) ENV LEGACY="),
    ("|1 BUILD_TOKEN=tok-en /bin/sh -c echo $BUILD_TOKEN > /dev/null",
     "|1 BUILD_TOKEN= /bin/sh -c echo $BUILD_TOKEN > /dev/null"),
    ("/bin/sh -c #(nop) env lower=case", "/bin/sh -c #(nop) env lower="),
    # nothing to remove
    ("/bin/sh -c #(nop)  CMD [\"/bin/sh\"]", "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]"),
    ("/bin/sh -c #(nop) COPY file:73e2b2 in /bin/busybox ", "/bin/sh -c #(nop) COPY file:73e2b2 in /bin/busybox "),
    ("/bin/busybox --install -s /bin", "/bin/busybox --install -s /bin"), ("", ""), ("ENV K=", "ENV K="),
])
def test_created_by_keeps_names_and_loses_values(created_by, redacted):
    assert redact_build_step(created_by) == redacted
    assert redact_build_step(redacted) == redacted


def test_a_base64_word_after_a_value_is_not_taken_for_a_name():
    """`ENV AUTH=Basic dXNlcjpwYXNz==`: the second word looks like NAME=... but is the value's."""
    assert redact_build_step("ENV AUTH=Basic dXNlcjpwYXNzd29yZA==") == "ENV AUTH="


def test_deeply_nested_text_does_not_exhaust_the_stack():
    text = "ONBUILD " * 5000 + "ENV X=" + SECRET + " " + "#(nop) " * 5000
    assert SECRET not in redact_build_step(text)
    assert SECRET not in redact_build_step("#(nop) " * 5000 + "ENV X=" + SECRET)


def test_the_classic_builders_cmd():
    assert redact_build_cmd(["|2", "A=x y", "B=z", "/bin/sh", "-c", "make"]) == ["|2", "A=", "B=", "/bin/sh", "-c", "make"]
    assert redact_build_cmd(["/bin/sh", "-c", "#(nop) ", "ONBUILD ENV ONB=s"]) == ["/bin/sh", "-c", "#(nop) ", "ONBUILD ENV ONB="]
    assert redact_build_cmd(["/bin/sh", "-c", "#(nop) ENV A=1"]) == ["/bin/sh", "-c", "#(nop) ENV A="]
    assert redact_build_cmd(["|3", "A=1"]) == ["|3", "A="]
    assert redact_build_cmd(["/bin/sh"]) == ["/bin/sh"] and redact_build_cmd([]) == []


# ---------------------------------------------------------------------------------------------
# CreatedBy, property: no generated value survives any mix of the forms; redaction is idempotent

# a value's other characters: anything the builders write unquoted, and the words of the forms
SHELL_MARK = " /bin/sh -c "
value_chars = st.lists(st.sampled_from(["a", "X", "0", " ", "  ", "=", '"', "'", "\\", "/", "-", "_", ":", "$", "#",
                                        "|", "(", ")", "\t", "#(nop) ", "ENV ", "ARG ", "|1 ", "RUN ", "B=",
                                        "ONBUILD ", SHELL_MARK]), max_size=6).map("".join)
values = st.builds(lambda a, n, b: a + f"Zq{n}Zq" + b, value_chars, st.integers(0, 10**6), value_chars)
env_names = st.sampled_from(["A", "DB_PASSWORD", "TOKEN", "X_1", "lower", "B2"])
pairs = st.lists(st.tuples(env_names, values), min_size=1, max_size=4)


def joined(items):
    return " ".join(f"{name}={value}" for name, value in items)


def quoted(items):
    return " ".join(f'{name}="{value}"' for name, value in items)


@st.composite
def build_steps(draw):
    """(CreatedBy, the secret values it holds), in every form the builders write."""
    items = draw(pairs)
    secrets = [value for _, value in items]
    nop = draw(st.sampled_from(["/bin/sh -c #(nop)  ", "/bin/sh -c #(nop) ", "/bin/bash -c #(nop) ", ""]))
    keyword = draw(st.sampled_from(["ENV", "ARG", "env", "ONBUILD ENV", "ONBUILD ARG"]))
    form = draw(st.integers(0, 5))
    if form == 0:  # ENV K=V K2=V2 (classic, BuildKit: unquoted)
        return nop + f"{keyword} {joined(items)}", secrets
    if form == 1:  # ENV K="V" (Buildah: the Containerfile's words)
        return nop + f"{keyword} {quoted(items)}", secrets
    if form == 2:  # ENV K V (the legacy form)
        name, value = items[0]
        return nop + f"ENV {name} {value}", [value]
    commands = ["/bin/sh -c make", "/bin/sh -c echo $A > /dev/null", "/bin/sh -c /bin/sh -c nested"]
    if not any(SHELL_MARK in secret for secret in secrets):
        # An exec-form RUN (or another SHELL) has no shell word to end the values at: with a value
        # that holds " /bin/sh -c ", the words after it cannot be told from the command (redact.py,
        # Invariant 1; no builder writes such a value unless it was given one).
        commands += ["make install", "/bin/bash -c x"]
    command = draw(st.sampled_from(commands))
    count = len(items) + draw(st.sampled_from([0, 0, 1, -1]))  # Buildah counts words, not arguments
    if form == 3:  # |N A=x B=y <command> (classic, Buildah)
        return f"|{count} {joined(items)} {command}", secrets
    if form == 4:  # RUN |N A=x B=y <command> # buildkit
        return f"RUN |{count} {joined(items)} {command} # buildkit", secrets
    return f"{nop}ONBUILD RUN |{count} {joined(items)} {command}", secrets


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(build_steps(), min_size=1, max_size=4))
def test_property_no_value_survives_any_created_by_and_redaction_is_idempotent(steps):
    for created_by, secrets in steps:
        once = redact_build_step(created_by)
        assert not re.search(r"Zq[0-9]+Zq", once), (created_by, once)  # every value holds one
        assert redact_build_step(once) == once
    # the same through the history answer: every entry, any order
    history = [{"Id": f"sha256:{i}", "CreatedBy": created_by, "Size": 0} for i, (created_by, _) in enumerate(steps)]
    out, f = run(Filtering(), "image history", history)
    assert not re.search(r"Zq[0-9]+Zq", json.dumps(out))
    again, second = run(Filtering(), "image history", out)
    assert again == out and second.redacted == 0


@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                          st.from_regex(r"[^\s=]{0,10}", fullmatch=True)), min_size=1, max_size=4))
def test_property_only_the_first_build_argument_name_is_kept(items):
    """N words need not be N arguments (Buildah counts words): `|2 A= X=` may be A=" X=", so a
    later NAME= is never kept (hypothesis found that one: X was a value's word)."""
    step = f"|{len(items)} {joined(items)} /bin/sh -c make"
    assert redact_build_step(step) == f"|{len(items)} {items[0][0]}= /bin/sh -c make"


def test_a_value_that_looks_like_another_argument_is_not_kept():
    assert redact_build_step("|2 A= Zq0Zq= /bin/sh -c make") == "|2 A= /bin/sh -c make"


# ---------------------------------------------------------------------------------------------
# Podman's CreateCommand

CREATE = ["/usr/bin/podman", "run", "-d", "--network", "none", "-e", "POD_SECRET=s1", "--env", "X2=s2",
          "--env=X3=s3", "-eX4=s4", "-ite", "X5=s5", "-e=X6=s6", "-e", "FROM_HOST", "--env-merge", "P=s7:${P}",
          "--creds", "user:s8", "--decryption-key=k:s9", "--log-opt", "tag=s10", "--env-file", "/etc/env",
          "-v", "/home/e:/x", "-lteam=a", "--name", "pc1", "localhost/porthole-busybox:latest", "sleep", "600"]


def test_create_command_loses_env_values_credentials_and_log_options():
    out = redact_create_command(CREATE, frozenset({"env", "log"}))
    assert not re.search(r"\bs[0-9]+\b", " ".join(out)), out
    assert out[5:12] == ["-e", "POD_SECRET=", "--env", "X2=", "--env=X3=", "-eX4=", "-ite"]
    assert "FROM_HOST" in out and "/home/e:/x" in out and "-lteam=a" in out and out[-3:] == CREATE[-3:]
    assert redact_create_command(out, frozenset({"env", "log"})) == out
    # each redaction on its own
    assert "--log-opt" in CREATE and redact_create_command(CREATE, frozenset({"env"}))[CREATE.index("--log-opt") + 1] == "tag=s10"
    assert redact_create_command(CREATE, frozenset({"log"}))[6] == "POD_SECRET=s1"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from(["-d", "-it", "--rm", "--name", "x", "img", "sh", "-c", "--", "-v", "/a:/b", "-p", "80:80"]),
    st.builds(lambda flag, n, v: (flag, f"N{n}=Zq{v}Zq"), st.sampled_from(["-e", "--env", "--env-merge", "-ie", "-tie"]),
              st.integers(0, 9), st.integers(0, 10**6)),
    st.builds(lambda flag, n, v: f"{flag}N{n}=Zq{v}Zq", st.sampled_from(["--env=", "-e", "-e=", "-ite", "--env-merge="]),
              st.integers(0, 9), st.integers(0, 10**6)),
    st.builds(lambda flag, v: (flag, f"user:Zq{v}Zq"), st.sampled_from(["--creds", "--decryption-key"]), st.integers(0, 10**6)),
), max_size=12))
def test_property_no_env_value_survives_a_create_command(words):
    args = ["podman", "run"] + [w for word in words for w in (word if isinstance(word, tuple) else (word,))]
    out = redact_create_command(args, frozenset({"env"}))
    assert "Zq" not in " ".join(out), (args, out)
    assert redact_create_command(out, frozenset({"env"})) == out
    assert len(out) == len(args)


# ---------------------------------------------------------------------------------------------
# the answers that carry them

def run(filtering, kind, doc, name="x"):
    f = ResponseFilter(filtering, kind, name)
    return f.document(copy.deepcopy(doc)), f


def plan(filtering, target, method="GET"):
    return plan_response_filter(filtering, method, canonicalize_target(target.encode()))


def test_history_is_filtered_for_every_profile_that_redacts_env():
    for target in ("/v1.41/images/busybox/history", "/images/library/busybox:1/history",
                   "/v4.3.1/libpod/images/localhost/ph-env:1/history"):
        p = plan(Filtering(), target)
        assert p.filter is not None and p.filter.kind == "image history", target
        assert plan(Filtering(frozenset()), target).filter is None, target  # "redact": [] relays it untouched
    assert classify_for_filter(("images", "history", "json")) == ("image", None)


def test_image_history_answer():
    history = [{"Id": "sha256:1", "Created": 1, "CreatedBy": f"/bin/sh -c #(nop)  ENV DB_PASSWORD={SECRET}",
                "Tags": ["ph-env:1"], "Size": 0, "Comment": ""},
               {"Id": "<missing>", "CreatedBy": f"|1 BUILD_TOKEN={SECRET} /bin/sh -c make", "Tags": None, "Size": 1},
               {"Id": "sha256:3", "CreatedBy": "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]"}]
    out, f = run(Filtering(), "image history", history)
    assert SECRET not in json.dumps(out) and f.redacted == 2
    assert [s["CreatedBy"] for s in out] == ["/bin/sh -c #(nop)  ENV DB_PASSWORD=", "|1 BUILD_TOKEN= /bin/sh -c make",
                                            "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]"]
    assert out[0]["Tags"] == ["ph-env:1"] and out[1]["Size"] == 1
    for bad, where in [({"Id": "x"}, "array"), ([{"CreatedBy": ["ENV", SECRET]}], "CreatedBy"), (["ENV"], r"\[0\]")]:
        with pytest.raises(TransformError, match=where):
            run(Filtering(), "image history", bad)


def test_image_inspect_build_steps_and_libpod_history():
    docker = {"Id": "sha256:a", "Container": "c" * 64,
              "Config": {"Env": [f"DB_PASSWORD={SECRET}"], "Cmd": ["/bin/sh"], "OnBuild": [f"ENV ONB={SECRET}"]},
              "ContainerConfig": {"Env": [], "Cmd": ["/bin/sh", "-c", "#(nop) ", f"ONBUILD ENV ONB={SECRET}"],
                                  "OnBuild": [f"ENV ONB={SECRET}"]}}
    out, _ = run(Filtering(), "image", docker)
    assert SECRET not in json.dumps(out)
    assert out["ContainerConfig"]["Cmd"] == ["/bin/sh", "-c", "#(nop) ", "ONBUILD ENV ONB="]
    assert out["Config"]["OnBuild"] == ["ENV ONB="] and out["Container"] == "c" * 64
    classic_run = {"ContainerConfig": {"Cmd": ["|1", f"BUILD_TOKEN={SECRET} x", "/bin/sh", "-c", "make"]}}
    assert run(Filtering(), "image", classic_run)[0]["ContainerConfig"]["Cmd"][:2] == ["|1", "BUILD_TOKEN="]
    libpod = {"Id": "a", "Config": {"Env": [f"A={SECRET}"], "Cmd": ["/bin/sh"]},
              "History": [{"created": "2026", "created_by": f'/bin/sh -c #(nop) ENV A="{SECRET} x"', "empty_layer": True},
                          {"created_by": f"|1 T={SECRET} /bin/sh -c make"}, {"created": "2026"}]}
    out, f = run(Filtering(), "image", libpod)
    assert SECRET not in json.dumps(out) and f.redacted == 3
    assert out["History"][0] == {"created": "2026", "created_by": "/bin/sh -c #(nop) ENV A=", "empty_layer": True}
    assert run(Filtering(frozenset()), "image", libpod)[0] == libpod
    with pytest.raises(TransformError, match=r"History\[0\]"):
        run(Filtering(), "image", {"History": [["created_by"]]})


def test_libpod_container_and_pod_create_commands():
    container = {"Id": "a" * 64, "Config": {"Env": [f"POD_SECRET={SECRET}"], "Labels": None, "OnBuild": None,
                                            "CreateCommand": ["podman", "run", "-e", f"POD_SECRET={SECRET}",
                                                              f"--log-opt=tag={SECRET}", "img"], "Entrypoint": ""}}
    out, f = run(Filtering(frozenset({"env"})), "container", container)
    assert out["Config"]["CreateCommand"] == ["podman", "run", "-e", "POD_SECRET=", f"--log-opt=tag={SECRET}", "img"]
    out, _ = run(Filtering(), "container", container)  # the defaults: env and log-options too
    assert SECRET not in json.dumps(out) and out["Config"]["CreateCommand"][-2] == "--log-opt=tag="
    assert run(Filtering(frozenset({"commands"})), "container", container)[0]["Config"]["CreateCommand"] == []
    assert plan(Filtering(), "/v4.3.1/libpod/containers/pc1/json").filter.kind == "container"
    pod = {"Id": "p", "CreateCommand": ["podman", "pod", "create", "--infra-command", "x", "--env", f"X={SECRET}"],
           "Containers": [{"Id": "a", "Name": "pc1"}], "NumContainers": 1}
    out, _ = run(Filtering(), "pod", pod)
    assert SECRET not in json.dumps(out) and out["Containers"] == pod["Containers"]
    assert plan(Filtering(), "/libpod/pods/p/json").filter.kind == "pod"
    assert plan(Filtering(), "/libpod/pods/json").filter is None  # the list has no create command
    with pytest.raises(TransformError, match="CreateCommand"):
        run(Filtering(), "pod", {"CreateCommand": "podman pod create"})


def test_onbuild_in_a_libpod_container_is_one_string():
    doc = {"Config": {"OnBuild": f"ENV X={SECRET}", "Labels": {}}}
    assert run(Filtering(), "container", doc)[0]["Config"]["OnBuild"] == "ENV X="
    with pytest.raises(TransformError, match="OnBuild"):
        run(Filtering(), "container", {"Config": {"OnBuild": {"x": 1}}})


def test_build_cache_descriptions_in_disk_usage():
    """BuildKit names a step by its line with build arguments and ENV values substituted
    (dockerfile2llb processCmdEnv): `[2/3] RUN curl -u admin:<TOKEN's value> ...`."""
    df = {"Images": [], "Containers": [], "Volumes": [],
          "BuildCache": [{"ID": "b1", "Type": "regular", "Description": f"[2/3] RUN curl -u admin:{SECRET} x"},
                         {"ID": "b2", "Description": ""}]}
    out, f = run(Filtering(), "disk usage", df)
    assert SECRET not in json.dumps(out) and out["BuildCache"][0]["ID"] == "b1" and f.redacted == 1
    assert plan(Filtering(frozenset({"env"})), "/system/df").filter is not None


def test_a_swarm_plugin_tasks_env_and_a_services_healthcheck():
    spec = {"Runtime": "plugin", "PluginSpec": {"name": "p", "remote": "r", "env": [f"KEY={SECRET}"]},
            "ContainerSpec": {"Healthcheck": {"Test": ["CMD-SHELL", f"curl -u a:{SECRET} x"]}}}
    task = {"ID": "t", "Spec": spec}
    out, _ = run(Filtering(), "task", task)
    assert out["Spec"]["PluginSpec"]["env"] == ["KEY="]
    assert SECRET in json.dumps(out)  # the healthcheck is a command: opt-in
    out, _ = run(Filtering(frozenset(REDACTIONS)), "service", {"Spec": {"TaskTemplate": spec}})
    assert SECRET not in json.dumps(out) and out["Spec"]["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"] == ["CMD-SHELL"]


def test_generated_units_and_kube_yaml_fail_closed():
    for target in ("/v4.3.1/libpod/generate/kube?names=pc1", "/v4.3.1/libpod/generate/pc1/systemd",
                   "/v5.6.0/libpod/quadlets/web.container/file"):
        p = plan(Filtering(), target)
        assert p.filter is not None and p.filter.kind == "generated", target
        with pytest.raises(TransformError, match="cannot be filtered"):
            p.filter.document({"container-pc1.service": f"ExecStart=/usr/bin/podman run -e X={SECRET}"})
        assert plan(Filtering(frozenset()), target).filter is None  # "redact": [] is a choice


def test_libpod_volumes_are_filtered_like_dockers():
    volume = {"Name": "v", "Driver": "local", "Mountpoint": "/x", "Options": {"o": f"password={SECRET}"}}
    listed = plan(Filtering(), "/v4.3.1/libpod/volumes/json")
    assert listed.filter.kind == "volume list"
    assert SECRET not in json.dumps(listed.filter.document([copy.deepcopy(volume)]))
    inspected = plan(Filtering(), "/v4.3.1/libpod/volumes/v/json")
    assert inspected.filter.kind == "volume" and SECRET not in json.dumps(inspected.filter.document(copy.deepcopy(volume)))
    assert plan(Filtering(), "/v4.3.1/libpod/volumes/v/exists").filter is None
    assert plan(Filtering(), "/volumes/json").filter.kind == "volume"  # dockerd: the volume named json


# ---------------------------------------------------------------------------------------------
# property: an image inspect and a history with any mix of secret-bearing fields

@st.composite
def images(draw):
    step = draw(build_steps())[0]
    return {"Id": "sha256:a",
            "Config": {"Env": [f"K={draw(values)}"], "Cmd": draw(st.sampled_from([None, ["/bin/sh"]])),
                       "OnBuild": [draw(build_steps())[0]]},
            "ContainerConfig": {"Cmd": draw(st.sampled_from([["/bin/sh", "-c", "#(nop) ", step],
                                                             ["/bin/sh", "-c", "#(nop) " + step],
                                                             ["|2", f"A={draw(values)}", f"B={draw(values)}", "/bin/sh", "-c", "x"]]))},
            "History": [{"created_by": draw(build_steps())[0]}, {"CreatedBy": step}]}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images())
def test_property_no_value_survives_an_image_inspect(doc):
    once, _ = run(Filtering(), "image", doc)
    assert not re.search(r"Zq[0-9]+Zq", json.dumps(once)), once
    twice, second = run(Filtering(), "image", once)
    assert twice == once and second.redacted == 0


def test_a_plugins_arguments_are_a_command_line():
    """`docker plugin set p args=...` and the plugin's configured args: removed with `commands`."""
    plugin = {"Name": "p", "Settings": {"Env": [], "Args": ["--password", SECRET]},
              "Config": {"Args": {"Name": "args", "Settable": ["value"], "Value": [f"--token={SECRET}"]}}}
    out, f = run(Filtering(frozenset({"commands"})), "plugin", plugin)
    assert SECRET not in json.dumps(out) and out["Settings"]["Args"] == [] and out["Config"]["Args"]["Value"] == []
    assert plan(Filtering(frozenset({"commands"})), "/plugins/p/json").filter is not None
    assert run(Filtering(), "plugin", plugin)[0] == plugin  # commands are opt-in


# ---------------------------------------------------------------------------------------------
# the classic builder's Cmd, property: no generated value survives; a Cmd without a build step's
# mark (|N first, or #(nop)) is returned as it is, so the filter can skip it

@st.composite
def build_cmds(draw):
    """(a classic builder's Cmd for a step, the secret values it holds)."""
    items = draw(pairs)
    secrets = [value for _, value in items]
    form = draw(st.integers(0, 2))
    if form == 0:  # RUN with build arguments: one item each, then the shell
        return [f"|{len(items)}", *(f"{name}={value}" for name, value in items), "/bin/sh", "-c", "make"], secrets
    if form == 1:  # ENV: the instruction in its own item after "#(nop) "
        return ["/bin/sh", "-c", "#(nop) ", f"ENV {joined(items)}"], secrets
    return ["/bin/sh", "-c", f"#(nop) ENV {joined(items)}"], secrets


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(build_cmds(), st.lists(st.text(alphabet="ab-=/ |#()", max_size=6), max_size=4))
def test_property_no_value_survives_a_classic_builders_cmd(cmd_and_secrets, plain):
    cmd, secrets = cmd_and_secrets
    once = redact_build_cmd(cmd)
    assert not any(secret in item for secret in secrets for item in once)
    assert redact_build_cmd(once) == once and len(once) == len(cmd)
    if not (plain and re.fullmatch(r"\|[0-9]{1,6}", plain[0])) and not any("#(nop)" in item for item in plain):
        assert redact_build_cmd(plain) == plain  # Invariant 3: nothing of these shapes, nothing removed
