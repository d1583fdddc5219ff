"""What one object of an answer keeps: the JSON shapes answers are read with, label scopes, and
the per-object redactions (ObjectFilter). filters.py builds whole answers from these.

Invariants (those of filters.py, for one object):
  1. A shape that is not what the daemon writes raises TransformError: the answer fails closed.
  2. Redaction keeps names and keys (tools that read them still work) and removes values; text
     the daemon recorded (build steps, command lines) loses its values through redact.py.
  3. An invisible object raises ObjectHidden, or is left out of its list.
  4. Every filter is idempotent: what it returns, filtered again, is unchanged.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from porthole.core.redact import redact_build_cmd, redact_build_step, redact_create_command
from porthole.core.rewrite import TransformError
from porthole.core.target import CONTROL_BYTES


REDACTIONS: Mapping[str, str] = {
    "env": "environment variable values (containers, images and their build history, services, tasks, "
           "plugins, Podman's CreateCommand): NAME= kept",
    "log-options": "log driver options (splunk-token, awslogs credentials, ...): keys kept",
    "volume-options": "volume driver options (a CIFS volume's password=), in volumes and in mounts",
    "exec-commands": "the command line of exec_create/exec_start events",
    "config-data": "the content of swarm configs (Spec.Data)",
    "swarm-tokens": "the swarm join tokens (worker and manager) of GET /swarm, and its CA's secrets there and in "
                    "/info (external CAs' options, a signing key should the spec carry one): keys kept",
    "commands": "container command lines (Path, Args, Cmd, Entrypoint, healthcheck test, Command, Podman's "
                "CreateCommand), a plugin's arguments",
    "host-paths": "host paths: mount sources, binds, storage-driver directories, log and volume paths",
}
# What a profile without "redact" removes. "commands" and "host-paths" are opt-in: `docker ps`
# shows COMMAND and `docker inspect` mounts, and neither is usually a secret.
DEFAULT_REDACTIONS = frozenset({"env", "log-options", "volume-options", "exec-commands", "config-data",
                                "swarm-tokens"})
Label = tuple[str, str | None]  # docker's label filter: ("key", None) or ("key", "value")


@dataclass(frozen=True)
class Filtering:
    """A profile's response filtering."""

    redact: frozenset[str] = DEFAULT_REDACTIONS
    visible: tuple[Label, ...] = ()  # every label must match; () sees everything
    keep_env: tuple[str, ...] = ()  # patterns (parse_env_pattern) of variables whose values env keeps

    @property
    def kept_env(self) -> re.Pattern[str] | None:
        """What matches the name of a variable whose value env redaction keeps; None: none."""
        return env_keeper(self.keep_env) if self.keep_env else None

    def label_filters(self) -> list[str]:
        return [key if value is None else f"{key}={value}" for key, value in self.visible]


def parse_label_filter(text: str) -> Label:
    """'key' or 'key=value', as docker's label filter; ValueError says what is wrong."""
    key, equals, value = text.partition("=")
    if not key or key != key.strip() or CONTROL_BYTES.search(text.encode("utf-8", "replace")):
        raise ValueError(f"{text!r} is not a label filter (key or key=value)")
    return key, value if equals else None


def parse_env_pattern(text: str) -> str:
    """A variable name or a glob of names ('NOMAD_*': * ? and [...] as fnmatch, matched against
    the whole name, case-sensitive); ValueError says what is wrong."""
    if not text or "=" in text or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"{text!r} is not a variable name or a glob of names (no '=', spaces or control characters)")
    if "*" in text and not text.strip("*?"):
        raise ValueError(f"{text!r} keeps every variable: leave env out of redact instead")
    return text


@functools.lru_cache(maxsize=64)
def env_keeper(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One expression for the patterns: .match(name) is a whole-name match of one of them."""
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns))


@functools.lru_cache(maxsize=64)
def command_kinds(redact: frozenset[str]) -> frozenset[str]:
    """Which flags' values leave Podman's CreateCommand (redact_create_command), unless "commands"
    blanks it: worked out once per set of redactions."""
    return frozenset(kind for kind, redaction in (("env", "env"), ("log", "log-options")) if redaction in redact)


def labels_match(labels: Any, wanted: Sequence[Label], where: str) -> bool:
    labels = _object(labels, where)
    return all(key in labels and (value is None or labels[key] == value) for key, value in wanted)


class ObjectHidden(TransformError):
    """The object is outside the profile's visible labels: answered as missing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TransformError(f"{where} is not a JSON object")
    return value


def _array(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TransformError(f"{where} is not a JSON array")
    return value


def _at(value: Any, path: str) -> Any:
    """value['A']['B'] for path 'A.B'; None where a level is missing or null."""
    where = ""
    for key in path.split("."):
        where = f"{where}.{key}" if where else key
        value = _object(value, where or "the answer").get(key)
        if value is None:
            return None
    return value


class ObjectFilter:
    """What one object of an answer keeps: the redaction primitives and the per-object filters.
    Counts what it removed (redacted) and left out (hidden) for the log line."""

    def __init__(self, filtering: Filtering, kind: str, name: str | None = None) -> None:
        self.filtering = filtering
        self.redact = filtering.redact
        self.visible = filtering.visible
        self.kept_env = filtering.kept_env  # env keeps the values of these variables
        self.kind = kind
        self.name = name  # the object as the client named it, for a 404's message
        self.redacted = 0  # values removed
        self.hidden = 0  # objects left out
        self.counts: tuple[int, int, int, int] | None = None  # /info under a scope: visible_counts
        self.command_kinds = command_kinds(self.redact)

    # -- redaction primitives: each removes values in place and counts them

    def _env(self, container: Any, key: str, where: str) -> None:
        values = _array(_object(container, where).get(key), f"{where}.{key}")
        kept = self.kept_env
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise TransformError(f"{where}.{key}[{i}] is not a string")
            name, equals, value = item.partition("=")
            if equals and value and not (kept is not None and kept.match(name)):
                values[i] = name + "="
                self.redacted += 1

    def _values(self, container: Any, key: str, where: str) -> None:
        options = _object(_object(container, where).get(key), f"{where}.{key}")
        for name, value in options.items():
            if value not in ("", None):
                options[name] = ""
                self.redacted += 1

    def _blank(self, container: Any, key: str, where: str) -> None:
        """A string becomes "", an array [] (a command line; a host path)."""
        container = _object(container, where)
        value = container.get(key)
        if isinstance(value, str) and value:
            container[key] = ""
        elif isinstance(value, list) and value:
            container[key] = []
        elif value not in (None, "", []):
            raise TransformError(f"{where}.{key} is neither a string nor an array")
        else:
            return
        self.redacted += 1

    def _text(self, container: Any, key: str, where: str, redact: Callable[[str], str]) -> None:
        """A string the daemon recorded, without the values `redact` (redact.py) removes."""
        container = _object(container, where)
        value = container.get(key)
        if value in (None, ""):
            return
        if not isinstance(value, str):
            raise TransformError(f"{where}.{key} is not a string")
        redacted = redact(value)
        if redacted != value:
            container[key] = redacted
            self.redacted += 1

    def _strings(self, container: Any, key: str, where: str, redact: Callable[[list], list]) -> None:
        """An array of strings the daemon recorded (a command line), without what `redact` removes."""
        values = _array(_object(container, where).get(key), f"{where}.{key}")
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise TransformError(f"{where}.{key}[{i}] is not a string")
        if not values:
            return  # (most answers have no OnBuild, no CreateCommand)
        redacted = redact(values)
        if redacted == values:
            return
        changed = sum(before != after for before, after in zip(values, redacted))
        if changed:
            values[:] = redacted
            self.redacted += changed

    def _build_steps(self, config: Any, where: str) -> None:
        """An image config's ONBUILD triggers, and the Cmd the classic builder recorded for the step
        that made it (`["|1", "TOKEN=x", "/bin/sh", "-c", ...]`, `[..., "#(nop) ", "ENV K=V"]`)."""
        if isinstance(_object(config, where).get("OnBuild"), str):  # Podman's: one string or null
            self._text(config, "OnBuild", where, redact_build_step)
        else:
            self._strings(config, "OnBuild", where, lambda items: [redact_build_step(i) for i in items])
        self._strings(config, "Cmd", where, redact_build_cmd)

    def _create_command(self, container: Any, where: str) -> None:
        """Podman's CreateCommand: the `podman run ...` a container (or pod) was made with."""
        if "commands" in self.redact:
            self._blank(container, "CreateCommand", where)
            return
        kinds = self.command_kinds
        if kinds:
            self._strings(container, "CreateCommand", where, lambda args: redact_create_command(args, kinds))

    def _healthcheck(self, config: Any, key: str, where: str) -> None:
        test = _array(_at(config, key + ".Test"), f"{where}.{key}.Test")
        if len(test) > 1:  # ["CMD-SHELL", "curl -u user:secret ..."]: keep the kind
            del test[1:]
            self.redacted += 1

    def _mounts(self, mounts: Any, where: str) -> None:
        for i, mount in enumerate(_array(mounts, where)):
            here = f"{where}[{i}]"
            if "volume-options" in self.redact:
                self._values(_at(mount, "VolumeOptions.DriverConfig"), "Options", here + ".VolumeOptions.DriverConfig")
            if "host-paths" in self.redact:
                self._blank(mount, "Source", here)

    def _container_spec(self, spec: Any, where: str) -> None:
        """A swarm service's or task's ContainerSpec."""
        if "env" in self.redact:
            self._env(spec, "Env", where)
        if "commands" in self.redact:
            self._blank(spec, "Command", where)
            self._blank(spec, "Args", where)
            self._healthcheck(spec, "Healthcheck", where)
        self._mounts(_object(spec, where).get("Mounts"), where + ".Mounts")

    def _task_spec(self, spec: Any, where: str) -> None:
        self._container_spec(_object(spec, where).get("ContainerSpec"), where + ".ContainerSpec")
        if "log-options" in self.redact:
            self._values(_object(spec, where).get("LogDriver"), "Options", where + ".LogDriver")
        plugin = _object(_object(spec, where).get("PluginSpec"), where + ".PluginSpec")
        if "env" in self.redact:  # a plugin task's settings: Go's runtime.PluginSpec writes "env"
            for key in [key for key in plugin if key.lower() == "env"]:
                self._env(plugin, key, where + ".PluginSpec")

    # -- per kind of object

    def container(self, doc: Any) -> Any:
        """GET /containers/{id}/json (Docker's and libpod's)."""
        if self.visible and not labels_match(_at(doc, "Config.Labels"), self.visible, "Config.Labels"):
            self.hidden += 1
            raise ObjectHidden(404, f"No such container: {self.name}")
        config, host = _object(doc, "the answer").get("Config"), _at(doc, "HostConfig")
        if "env" in self.redact:
            self._env(config, "Env", "Config")
            self._build_steps(config, "Config")
        self._create_command(config, "Config")
        if "log-options" in self.redact:
            self._values(_at(host, "LogConfig"), "Config", "HostConfig.LogConfig")
        self._mounts(_object(host, "HostConfig").get("Mounts"), "HostConfig.Mounts")
        if "commands" in self.redact:
            for key in ("Path", "Args"):
                self._blank(doc, key, "the answer")
            for key in ("Cmd", "Entrypoint"):
                self._blank(config, key, "Config")
            for key in ("Healthcheck", "StartupHealthCheck"):
                self._healthcheck(config, key, "Config")
        if "host-paths" in self.redact:
            self._mounts(_object(doc, "the answer").get("Mounts"), "Mounts")
            binds = _array(_object(host, "HostConfig").get("Binds"), "HostConfig.Binds")
            for i, bind in enumerate(binds):
                if not isinstance(bind, str):
                    raise TransformError(f"HostConfig.Binds[{i}] is not a string")
                if not bind.startswith(":"):
                    binds[i] = ":" + bind.partition(":")[2]
                    self.redacted += 1
            self._values(_at(doc, "GraphDriver"), "Data", "GraphDriver")
            for key in ("ResolvConfPath", "HostnamePath", "HostsPath", "LogPath"):
                self._blank(doc, key, "the answer")
        return doc

    def container_summary(self, item: Any, where: str) -> bool:
        """One entry of GET /containers/json (or /system/df's Containers); False: leave it out."""
        if self.visible and not labels_match(_object(item, where).get("Labels"), self.visible, where + ".Labels"):
            self.hidden += 1
            return False
        if "commands" in self.redact:
            self._blank(item, "Command", where)
        if "host-paths" in self.redact:
            for i, mount in enumerate(_array(_object(item, where).get("Mounts"), where + ".Mounts")):
                self._blank(mount, "Source", f"{where}.Mounts[{i}]")
        return True

    def image(self, doc: Any) -> Any:
        """GET /images/{name}/json (Docker's, and libpod's with the image's OCI History)."""
        body = _object(doc, "the answer")
        if "env" in self.redact:
            for key in ("Config", "ContainerConfig"):
                self._env(body.get(key), "Env", key)
                self._build_steps(body.get(key), key)
            for i, step in enumerate(_array(body.get("History"), "History")):
                for key in ("created_by", "CreatedBy"):
                    self._text(step, key, f"History[{i}]", redact_build_step)
        if "host-paths" in self.redact:
            self._values(_at(doc, "GraphDriver"), "Data", "GraphDriver")
        if self.visible:  # a committed image names (and holds the config of) its container
            if body.pop("Container", None):
                self.hidden += 1
            body.pop("ContainerConfig", None)  # (API 1.45 leaves both out)
        return doc

    def image_step(self, step: Any, where: str) -> bool:
        """One entry of GET /images/{name}/history."""
        if "env" in self.redact:
            self._text(step, "CreatedBy", where, redact_build_step)
        return True

    def image_summary(self, item: Any, where: str) -> bool:
        """One entry of GET /images/json: under a visible scope, the containers using it are not
        counted (-1: dockerd's "not computed") nor named (a manifest's ImageData.Containers)."""
        item = _object(item, where)
        if self.visible:
            if item.get("Containers") not in (None, -1):
                item["Containers"] = -1
            for i, manifest in enumerate(_array(item.get("Manifests"), where + ".Manifests")):
                data = _object(_object(manifest, f"{where}.Manifests[{i}]").get("ImageData"), "ImageData")
                users = _array(data.get("Containers"), f"{where}.Manifests[{i}].ImageData.Containers")
                if users:
                    self.hidden += len(users)
                    data["Containers"] = []
        return True

    def pod(self, doc: Any, where: str = "the answer") -> bool:
        """A libpod pod (inspect, or an entry of the list): its CreateCommand; under a visible
        scope its containers, which carry no labels to decide by (fail closed, as networks)."""
        body = _object(doc, where)
        self._create_command(body, where)
        if self.visible:
            members = _array(body.get("Containers"), where + ".Containers")
            if members:
                self.hidden += len(members)
                body["Containers"] = []
            if "NumContainers" in body:
                body["NumContainers"] = 0
        return True

    def service(self, doc: Any, where: str = "the answer") -> bool:
        if self.visible and not labels_match(_at(doc, "Spec.Labels"), self.visible, where + ".Spec.Labels"):
            self.hidden += 1
            return False
        for spec in ("Spec", "PreviousSpec"):
            template = _at(doc, spec + ".TaskTemplate")
            self._task_spec(template, f"{where}.{spec}.TaskTemplate")
        return True

    def task(self, doc: Any, where: str = "the answer") -> bool:
        labels = _at(doc, "Spec.ContainerSpec.Labels")
        if self.visible and not labels_match(labels, self.visible, where + ".Spec.ContainerSpec.Labels"):
            self.hidden += 1
            return False
        self._task_spec(_at(doc, "Spec"), where + ".Spec")
        return True

    def volume(self, doc: Any, where: str = "the answer") -> Any:
        if "volume-options" in self.redact:
            self._values(doc, "Options", where)
        if "host-paths" in self.redact:
            self._blank(doc, "Mountpoint", where)
        return doc

    def plugin(self, doc: Any, where: str = "the answer") -> Any:
        if "env" in self.redact:
            self._env(_at(doc, "Settings"), "Env", where + ".Settings")
            for i, variable in enumerate(_array(_at(doc, "Config.Env"), where + ".Config.Env")):
                if _object(variable, f"{where}.Config.Env[{i}]").get("Value") not in ("", None):
                    variable["Value"] = ""
                    self.redacted += 1
        if "commands" in self.redact:  # the plugin's arguments, as `docker plugin set` gave them
            self._blank(_at(doc, "Settings"), "Args", where + ".Settings")
            self._blank(_at(doc, "Config.Args"), "Value", where + ".Config.Args")
        return doc

    def config(self, doc: Any, where: str = "the answer") -> Any:
        if "config-data" in self.redact:
            self._blank(_at(doc, "Spec"), "Data", where + ".Spec")
        return doc

    def network(self, doc: Any, where: str = "the answer") -> Any:
        """A visible scope hides which containers use a network (Docker's Containers, libpod's
        containers) and which services and tasks (verbose=true's Services): the entries carry no
        labels to decide by, so all of them go (fail closed)."""
        body = _object(doc, where)
        for key in ("Containers", "containers", "Services"):
            attached = _object(body.get(key), f"{where}.{key}")
            if self.visible and attached:
                self.hidden += len(attached)
                attached.clear()
        return doc
