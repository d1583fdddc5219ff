"""What a profile may see of an answer: redaction and label scopes.

Allowing an endpoint is not allowing everything it returns. A profile's "redact" names what is
removed from answers (secrets: environment values, log and volume driver options, exec
command lines, ...); its "visible" scopes which containers, services and tasks exist for it at
all. These are pure functions over parsed JSON; rewrite.py applies them to an answer's bytes,
and Lookup (connections.sources) resolves an object before a request about it.

Invariants:
  1. A filter that cannot be applied (not JSON, an unexpected shape, over the bound) fails the
     answer: a 502, or an abort mid-stream. The unfiltered bytes never pass.
  2. Redaction keeps names and keys (tools that read them still work) and removes values.
  3. An invisible object is answered as dockerd answers a missing one (404, same message).
  4. Filtering is idempotent: a filtered answer filtered again is unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from porthole.core.rewrite import ResponseTransform, TransformError, event_bytes
from porthole.core.target import CONTROL_BYTES, Refusal, SAFE_SEGMENT, Target


REDACTIONS: Mapping[str, str] = {
    "env": "environment variable values (containers, images, services, tasks, plugins): NAME= kept",
    "log-options": "log driver options (splunk-token, awslogs credentials, ...): keys kept",
    "volume-options": "volume driver options (a CIFS volume's password=), in volumes and in mounts",
    "exec-commands": "the command line of exec_create/exec_start events",
    "config-data": "the content of swarm configs (Spec.Data)",
    "commands": "container command lines (Path, Args, Cmd, Entrypoint, healthcheck test, Command)",
    "host-paths": "host paths: mount sources, binds, storage-driver directories, log and volume paths",
}
# What a profile without "redact" removes. "commands" and "host-paths" are opt-in: `docker ps`
# shows COMMAND and `docker inspect` mounts, and neither is usually a secret.
DEFAULT_REDACTIONS = frozenset({"env", "log-options", "volume-options", "exec-commands", "config-data"})
Label = tuple[str, str | None]  # docker's label filter: ("key", None) or ("key", "value")


@dataclass(frozen=True)
class Filtering:
    """A profile's response filtering."""

    redact: frozenset[str] = DEFAULT_REDACTIONS
    visible: tuple[Label, ...] = ()  # every label must match; () sees everything

    def label_filters(self) -> list[str]:
        return [key if value is None else f"{key}={value}" for key, value in self.visible]


def parse_label_filter(text: str) -> Label:
    """'key' or 'key=value', as docker's label filter; ValueError says what is wrong."""
    key, equals, value = text.partition("=")
    if not key or key != key.strip() or CONTROL_BYTES.search(text.encode("utf-8", "replace")):
        raise ValueError(f"{text!r} is not a label filter (key or key=value)")
    return key, value if equals else None


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


class ResponseFilter:
    """One exchange's filter: what it removes, and counts of what it removed for the log line."""

    def __init__(self, filtering: Filtering, kind: str, name: str | None = None) -> None:
        self.redact = filtering.redact
        self.visible = filtering.visible
        self.kind = kind
        self.name = name  # the object as the client named it, for a 404's message
        self.redacted = 0  # values removed
        self.hidden = 0  # objects left out

    # -- redaction primitives: each removes values in place and counts them

    def _env(self, container: Any, key: str, where: str) -> None:
        values = _array(_object(container, where).get(key), f"{where}.{key}")
        for i, item in enumerate(values):
            if not isinstance(item, str):
                raise TransformError(f"{where}.{key}[{i}] is not a string")
            name, equals, value = item.partition("=")
            if equals and value:
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
        self._mounts(_object(spec, where).get("Mounts"), where + ".Mounts")

    def _task_spec(self, spec: Any, where: str) -> None:
        self._container_spec(_object(spec, where).get("ContainerSpec"), where + ".ContainerSpec")
        if "log-options" in self.redact:
            self._values(_object(spec, where).get("LogDriver"), "Options", where + ".LogDriver")

    # -- per kind of object

    def container(self, doc: Any) -> Any:
        """GET /containers/{id}/json (Docker's and libpod's)."""
        if self.visible and not labels_match(_at(doc, "Config.Labels"), self.visible, "Config.Labels"):
            self.hidden += 1
            raise ObjectHidden(404, f"No such container: {self.name}")
        config, host = _object(doc, "the answer").get("Config"), _at(doc, "HostConfig")
        if "env" in self.redact:
            self._env(config, "Env", "Config")
        if "log-options" in self.redact:
            self._values(_at(host, "LogConfig"), "Config", "HostConfig.LogConfig")
        self._mounts(_object(host, "HostConfig").get("Mounts"), "HostConfig.Mounts")
        if "commands" in self.redact:
            for key in ("Path", "Args"):
                self._blank(doc, key, "the answer")
            for key in ("Cmd", "Entrypoint"):
                self._blank(config, key, "Config")
            test = _array(_at(config, "Healthcheck.Test"), "Config.Healthcheck.Test")
            if len(test) > 1:  # ["CMD-SHELL", "curl -u user:secret ..."]: keep the kind
                del test[1:]
                self.redacted += 1
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
        for key in ("Config", "ContainerConfig"):
            if "env" in self.redact:
                self._env(_object(doc, "the answer").get(key), "Env", key)
        if "host-paths" in self.redact:
            self._values(_at(doc, "GraphDriver"), "Data", "GraphDriver")
        return doc

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
        return doc

    def config(self, doc: Any, where: str = "the answer") -> Any:
        if "config-data" in self.redact:
            self._blank(_at(doc, "Spec"), "Data", where + ".Spec")
        return doc

    def network(self, doc: Any, where: str = "the answer") -> Any:
        """A visible scope hides which containers use a network: the entries carry no labels to
        decide by, so all of them go (fail closed)."""
        attached = _object(_object(doc, where).get("Containers"), where + ".Containers")
        if self.visible and attached:
            self.hidden += len(attached)
            attached.clear()
        return doc

    # -- whole answers

    def _list(self, doc: Any, keep: Callable[[Any, str], Any]) -> list:
        items = doc if isinstance(doc, list) else None
        if items is None:
            raise TransformError(f"the answer to a {self.kind} is not a JSON array")
        return [item for i, item in enumerate(items) if keep(item, f"[{i}]") is not False]

    def document(self, doc: Any) -> Any:
        kind = self.kind
        if kind == "container":
            return self.container(doc)
        if kind == "container list":
            return self._list(doc, self.container_summary)
        if kind == "image":
            return self.image(doc)
        if kind in ("service", "task"):
            if not getattr(self, kind)(doc):
                raise ObjectHidden(404, f"{kind} {self.name} not found")
            return doc
        if kind == "service list":
            return self._list(doc, self.service)
        if kind == "task list":
            return self._list(doc, self.task)
        if kind == "volume":
            return self.volume(doc)
        if kind == "volume list":
            for i, volume in enumerate(_array(_object(doc, "the answer").get("Volumes"), "Volumes")):
                self.volume(volume, f"Volumes[{i}]")
            return doc
        if kind == "disk usage":
            body = _object(doc, "the answer")
            if body.get("Containers") is not None:
                body["Containers"] = [c for i, c in enumerate(_array(body["Containers"], "Containers"))
                                      if self.container_summary(c, f"Containers[{i}]")]
            for i, volume in enumerate(_array(body.get("Volumes"), "Volumes")):
                self.volume(volume, f"Volumes[{i}]")
            return doc
        if kind in ("plugin", "config", "network"):
            return getattr(self, kind)(doc)
        if kind in ("plugin list", "config list", "network list"):
            return self._list(doc, getattr(self, kind.split()[0]))
        raise TransformError(f"no filter for a {kind}")  # plan_response_filter names only the above

    def event_line(self, line: bytes) -> bytes:
        """event() on one line of /events, serialised. Its result depends on the line and this
        profile's filtering alone, so it is kept for the next watcher: SharedStream hands each
        event to every watcher in turn, and watchers of one profile share the work (counts
        included). Lines over MAX_SHARED_EVENT_BYTES, and events that fail, are not kept."""
        key = (self.redact, self.visible, bytes(line))  # (the rewriter's lines are bytearrays)
        known = _FILTERED_EVENTS.get(key)
        if known is None:
            redacted, hidden = self.redacted, self.hidden
            known = (event_bytes(self.event, line), self.redacted - redacted, self.hidden - hidden)
            if len(line) <= MAX_SHARED_EVENT_BYTES:
                if len(_FILTERED_EVENTS) >= MAX_SHARED_EVENTS:
                    _FILTERED_EVENTS.clear()
                _FILTERED_EVENTS[key] = known
            return known[0]
        self.redacted += known[1]
        self.hidden += known[2]
        return known[0]

    def event(self, event: Any) -> Any:
        """One /events object; None: not delivered."""
        event = _object(event, "an event")
        actor = _object(event.get("Actor"), "Actor")
        attributes = _object(actor.get("Attributes"), "Actor.Attributes")
        kind = event.get("Type")
        if self.visible:
            if kind == "container":
                if not labels_match(attributes, self.visible, "Actor.Attributes"):
                    self.hidden += 1
                    return None
            elif kind in ("service", "node") or "container" in attributes:
                # service events carry no labels, and network or volume events that name a
                # container cannot say whether it is visible: fail closed
                self.hidden += 1
                return None
        if "exec-commands" in self.redact:
            for key in ("Action", "status"):
                value = event.get(key)
                if isinstance(value, str) and value.startswith("exec_") and ":" in value:
                    event[key] = value.partition(":")[0]
                    self.redacted += 1
            for key in ("execCommand", "command"):
                if attributes.get(key) not in (None, ""):
                    attributes[key] = ""
                    self.redacted += 1
        return event


# Podman's /libpod/... twins answer in the same shapes for what is filtered here.
def classify_for_filter(segments: Sequence[str]) -> tuple[str | None, str | None]:
    """(kind of answer to filter, object kind to resolve before forwarding) for a path."""
    s = tuple(segments[1:]) if segments[:1] == ("libpod",) else tuple(segments)
    head, n = s[0], len(s)
    if head == "containers":
        if s == ("containers", "json"):
            return "container list", None
        if n == 3 and s[2] == "json":
            return "container", None
        return None, ("container" if n >= 3 else None)
    if head in ("services", "tasks"):
        single = head[:-1]
        if n == 1:
            return f"{single} list", None
        if n == 2:
            return single, None
        return None, (single if n >= 3 else None)
    if head == "images" and n >= 3 and s[-1] == "json":
        return "image", None
    if head == "plugins":
        return ("plugin list" if n == 1 else "plugin" if s[-1] == "json" else None), None
    if head in ("volumes", "configs", "networks"):
        single = head[:-1]
        return (f"{single} list" if n == 1 else single if n == 2 else None), None
    if s == ("system", "df"):
        return "disk usage", None
    if s == ("events",):
        return "events", None
    return None, None


# Which redactions can change each kind of answer: with none of them on, and no visible
# scope, the answer is relayed untouched (no buffering, no parsing).
_REDACTIONS_FOR = {
    "container": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "container list": {"commands", "host-paths"},
    "image": {"env", "host-paths"},
    "service": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "task": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "volume": {"volume-options", "host-paths"},
    "disk usage": {"commands", "host-paths", "volume-options"},
    "plugin": {"env"},
    "config": {"config-data"},
    "network": set(),
    "events": {"exec-commands"},
}
_SCOPED = {"container", "container list", "service", "service list", "task", "task list", "disk usage",
           "network", "network list", "events"}


@dataclass(frozen=True)
class FilterPlan:
    target: Target  # what to forward: a list's label filters added
    method: str  # a filtered HEAD is forwarded as GET, so its Content-Length is the filtered one
    filter: ResponseFilter | None  # None: relay the answer untouched
    lookup: str | None = None  # resolve this kind of object (segment after the collection) first


def plan_response_filter(filtering: Filtering, method: str, target: Target) -> FilterPlan:
    """How one allowed request's answer is filtered. Raises Refusal if its filters query cannot
    take the profile's label scope."""
    kind, lookup = classify_for_filter(target.segments)
    if lookup is not None and filtering.visible:
        return FilterPlan(target, method, None, lookup)
    if kind is None:
        return FilterPlan(target, method, None)
    base = kind.removesuffix(" list")
    scoped = bool(filtering.visible) and (kind in _SCOPED or base in _SCOPED)
    if not scoped and not filtering.redact & _REDACTIONS_FOR.get(kind, _REDACTIONS_FOR.get(base, set())):
        return FilterPlan(target, method, None)
    name = target.segments[-2] if kind == "container" else target.segments[-1]
    if kind in ("container list", "service list") and filtering.visible:
        target = with_label_filters(target, filtering.label_filters())  # cheaper: dockerd filters too
    forwarded = "GET" if method == "HEAD" and kind != "events" else method
    return FilterPlan(target, forwarded, ResponseFilter(filtering, kind, name))


DEFAULT_FILTERING = Filtering()  # a profile without "redact" or "visible"
MAX_EVENT_BYTES = 1024 * 1024  # one /events object; dockerd's are a few hundred bytes
MAX_SHARED_EVENTS = 64  # filtered events kept for the next watcher (ResponseFilter.event_line)
MAX_SHARED_EVENT_BYTES = 16 * 1024  # ... each at most this long
_FILTERED_EVENTS: dict[tuple, tuple[bytes, int, int]] = {}


def filter_transform(response_filter: ResponseFilter, max_bytes: int) -> ResponseTransform:
    """The relay's transform stage for one filtered exchange."""
    if response_filter.kind == "events":
        return ResponseTransform(event_line=response_filter.event_line, max_bytes=min(max_bytes, MAX_EVENT_BYTES))
    return ResponseTransform(document=response_filter.document, max_bytes=max_bytes)


def with_label_filters(target: Target, labels: Sequence[str]) -> Target:
    """The target with `labels` added to its filters query (list or map form, as the client
    wrote it). The response is still filtered: the daemon is not trusted to have applied it."""
    raw = target.query_value("filters")
    try:
        filters = json.loads(raw) if raw else {}
    except (ValueError, RecursionError):
        raise Refusal(400, "the filters query parameter is not valid JSON") from None
    if not isinstance(filters, dict):
        raise Refusal(400, "the filters query parameter is not a JSON object")
    current = filters.get("label")
    if current is None and any(isinstance(value, dict) for value in filters.values()):
        filters["label"] = {label: True for label in labels}  # dockerd refuses the two forms mixed
    elif current is None:
        filters["label"] = list(labels)
    elif isinstance(current, list):
        filters["label"] = current + [label for label in labels if label not in current]
    elif isinstance(current, dict):
        filters["label"] = {**current, **{label: True for label in labels}}
    else:
        raise Refusal(400, "the label filter is neither a list nor a map")
    text = json.dumps(filters, separators=(",", ":"))
    query = tuple((k, text if k == "filters" else v) for k, v in target.query)
    if raw is None:
        query += (("filters", text),)
    return Target(target.version, target.segments, query)


def resolved_object(kind: str, name: str, status: int, doc: Any, filtering: Filtering) -> str:
    """After Lookup asked the daemon about `name`: the full ID to forward the request with.
    Raises ObjectHidden for a missing or invisible object, TransformError for a bad answer."""
    if status == 404 or (status == 200 and not _visible_object(kind, doc, filtering)):
        raise ObjectHidden(404, f"No such container: {name}" if kind == "container" else f"{kind} {name} not found")
    if status != 200:
        message = _object(doc, "the answer").get("message") if isinstance(doc, dict) else None
        raise ObjectHidden(status if 400 <= status < 600 else 502,
                           message if isinstance(message, str) else f"the daemon answered {status}")
    full_id = _object(doc, "the answer").get("ID" if kind != "container" else "Id")
    if not isinstance(full_id, str) or not SAFE_SEGMENT.fullmatch(full_id):
        raise TransformError(f"the daemon's {kind} has no usable ID")
    return full_id


def _visible_object(kind: str, doc: Any, filtering: Filtering) -> bool:
    labels = {"container": "Config.Labels", "service": "Spec.Labels", "task": "Spec.ContainerSpec.Labels"}[kind]
    return labels_match(_at(doc, labels), filtering.visible, labels)
