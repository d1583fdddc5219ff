"""What a profile may see of an answer: redaction and label scopes.

Allowing an endpoint is not allowing everything it returns. A profile's "redact" names what is
removed from answers (secrets: environment values, log and volume driver options, exec
command lines, ...); its "visible" scopes which containers, services and tasks exist for it at
all. These are pure functions over parsed JSON: objects.py filters one object (redact.py the
text the daemon recorded in it: build steps, command lines), this module whole answers;
rewrite.py applies them to an answer's bytes, and Lookup (connections.sources) asks the daemon
before a request where the scope needs it.

Invariants:
  1. A filter that cannot be applied (not JSON, an unexpected shape, over the bound) fails the
     answer: a 502, or an abort mid-stream. The unfiltered bytes never pass.
  2. Redaction keeps names and keys (tools that read them still work) and removes values.
  3. An invisible object is answered as the daemon answers a missing one (404, same message),
     and a name means what it would mean to the daemon if the invisible objects did not exist
     (resolve_among_visible): a hidden object never changes an answer about a visible one.
     What names or counts invisible objects in an answer about others (a network's containers,
     /info's counts) is removed or counted again among the visible ones.
  4. Filtering is idempotent: a filtered answer filtered again is unchanged.
  5. A filtered answer or event kept for the next request (Kept) is what filtering the same
     bytes again would give: the key holds everything the result depends on.
"""
from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from porthole.core.objects import Filtering, ObjectFilter, ObjectHidden, _array, _at, _object, labels_match
from porthole.core.rewrite import ResponseTransform, TransformError, document_bytes, event_bytes
from porthole.core.target import Refusal, SAFE_SEGMENT, Target


class ResponseFilter(ObjectFilter):
    """One exchange's filter: a whole answer (document) or an event stream (event_line)."""

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
        if kind == "pod":
            self.pod(doc)
            return doc
        if kind in ("service", "task"):
            if not getattr(self, kind)(doc):
                raise ObjectHidden(404, f"{kind} {self.name} not found")
            return doc
        if kind in ("service list", "task list", "pod list"):
            return self._list(doc, getattr(self, kind.split()[0]))
        if kind in ("image history", "image list"):
            return self._list(doc, self.image_step if kind == "image history" else self.image_summary)
        if kind == "volume":
            return self.volume(doc)
        if kind == "volume list":
            if isinstance(doc, list):  # libpod's /libpod/volumes/json
                return self._list(doc, self.volume)
            for i, volume in enumerate(_array(_object(doc, "the answer").get("Volumes"), "Volumes")):
                self.volume(volume, f"Volumes[{i}]")
            return doc
        if kind == "disk usage":
            return self.disk_usage(doc)
        if kind == "info":
            return self.info(doc)
        if kind == "swarm":
            return self.swarm(doc)
        if kind in ("plugin", "config", "network"):
            return getattr(self, kind)(doc)
        if kind in ("plugin list", "config list", "network list"):
            return self._list(doc, getattr(self, kind.split()[0]))
        if kind == "generated":  # a kube YAML or systemd units: env values in free text
            raise TransformError("generated kube YAML, systemd units and quadlet files carry environment "
                                 "values and command lines in free text: they cannot be filtered")
        raise TransformError(f"no filter for a {kind}")  # plan_response_filter names only the above

    def disk_usage(self, doc: Any) -> Any:
        """GET /system/df: its containers and volumes; the build cache's step descriptions (BuildKit
        writes RUN lines with build-argument and ENV values substituted); under a visible scope,
        what uses each image and volume counts visible containers only."""
        body = _object(doc, "the answer")
        listed = body.get("Containers")
        if listed is not None:
            body["Containers"] = listed = [c for i, c in enumerate(_array(listed, "Containers"))
                                           if self.container_summary(c, f"Containers[{i}]")]
        volumes = _array(body.get("Volumes"), "Volumes")
        for i, volume in enumerate(volumes):
            self.volume(volume, f"Volumes[{i}]")
        if "env" in self.redact:
            for i, record in enumerate(_array(body.get("BuildCache"), "BuildCache")):
                self._blank(record, "Description", f"BuildCache[{i}]")
        if not self.visible:
            return doc
        for i, image in enumerate(_array(body.get("Images"), "Images")):
            image = _object(image, f"Images[{i}]")
            if "Containers" in image:  # -1: not computed (the answer lists no containers)
                ident = image.get("Id", image.get("ImageID"))
                image["Containers"] = -1 if listed is None else sum(c.get("ImageID") == ident for c in listed)
        for i, volume in enumerate(volumes):
            volume = _object(volume, f"Volumes[{i}]")
            name = volume.get("Name", volume.get("VolumeName"))
            users = -1 if listed is None else sum(
                any(_object(m, "Mounts[]").get("Type") == "volume" and m.get("Name") == name
                    for m in _array(c.get("Mounts"), "Containers[].Mounts")) for c in listed)
            usage = _object(volume.get("UsageData"), f"Volumes[{i}].UsageData")
            if "RefCount" in usage:
                usage["RefCount"] = users
            if "Links" in volume:  # libpod's
                volume["Links"] = max(users, 0)
        return doc

    def info(self, doc: Any) -> Any:
        """GET /info (and libpod's): a swarm manager's default log driver options go with
        log-options (a splunk-token there reaches every task), its CA's secrets with swarm-tokens
        (as in GET /swarm: the same spec); under a visible scope, the
        container counts are of visible containers (counted just before: visible_counts)."""
        if "log-options" in self.redact:
            where = "Swarm.Cluster.Spec.TaskDefaults.LogDriver"
            self._values(_at(doc, where), "Options", where)
        if "swarm-tokens" in self.redact:
            self._ca_secrets(_at(doc, "Swarm.Cluster.Spec.CAConfig"), "Swarm.Cluster.Spec.CAConfig")
        if not self.visible:
            return doc
        if self.counts is None:
            raise TransformError("the visible containers were not counted")
        body = _object(doc, "the answer")
        total, running, paused, stopped = self.counts
        for key, value in (("Containers", total), ("ContainersRunning", running), ("ContainersPaused", paused),
                           ("ContainersStopped", stopped)):
            if key in body:
                body[key] = value
        store = _object(_at(doc, "store.containerStore"), "store.containerStore")
        for key, value in (("number", total), ("running", running), ("paused", paused), ("stopped", stopped)):
            if key in store:
                store[key] = value
        return doc

    def swarm(self, doc: Any) -> Any:
        """GET /swarm: swarm-tokens removes the join tokens (JoinTokens.Worker and .Manager: with
        one, a machine joins the swarm) and the CA's secrets (_ca_secrets); log-options the task
        defaults' log driver options, as in /info."""
        if "swarm-tokens" in self.redact:
            self._values(doc, "JoinTokens", "the answer")
            self._ca_secrets(_at(doc, "Spec.CAConfig"), "Spec.CAConfig")
        if "log-options" in self.redact:
            where = "Spec.TaskDefaults.LogDriver"
            self._values(_at(doc, where), "Options", where)
        return doc

    def _ca_secrets(self, ca_config: Any, where: str) -> None:
        """A swarm spec's CAConfig: the signing key should the spec carry one (dockerd leaves it
        out) and the external CAs' driver options (what a CFSSL signer is reached with)."""
        self._blank(ca_config, "SigningCAKey", where)
        for i, external in enumerate(_array(_object(ca_config, where).get("ExternalCAs"), f"{where}.ExternalCAs")):
            self._values(external, "Options", f"{where}.ExternalCAs[{i}]")

    def document_bytes(self, data: bytes) -> bytes:
        """document() on a whole answer, serialised, and kept (_kept): a dashboard polling a
        container that did not change gets its filtered answer again without the work."""
        return self._kept(data, document_bytes, self.document)

    def event_line(self, line: bytes) -> bytes:
        """event() on one line of /events, serialised, and kept (_kept): SharedStream hands each
        event to every watcher in turn, so watchers of one profile share the work."""
        return self._kept(bytes(line), event_bytes, self.event)  # (lines are bytearrays)

    def _kept(self, data: bytes, serialised: Callable[[Callable[[Any], Any], bytes], bytes],
              transform: Callable[[Any], Any]) -> bytes:
        """serialised(transform, data), the counts it adds included, kept in KEPT for the next request or
        watcher whose filter and answer are the same: a filter's result depends on its settings,
        its kind, /info's visible counts and the answer's bytes alone. What fails (a hidden
        object included) is not kept."""
        key = (self.filtering, self.kind, self.counts, data)
        known = KEPT.get(key)
        if known is None:
            redacted, hidden = self.redacted, self.hidden
            known = (serialised(transform, data), self.redacted - redacted, self.hidden - hidden)
            KEPT.put(key, known, len(data) + len(known[0]))
        else:
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


# Podman's /libpod/... twins answer in the same shapes for what is filtered here, but list
# volumes and networks at .../json and inspect them at .../{name}/json.
def classify_for_filter(segments: Sequence[str]) -> tuple[str | None, str | None]:
    """(kind of answer to filter, object kind to resolve before forwarding) for a path."""
    libpod = segments[:1] == ("libpod",)
    s = tuple(segments[1:]) if libpod else tuple(segments)
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
    if head == "images":
        if s == ("images", "json"):
            return "image list", None
        return ({"json": "image", "history": "image history"}.get(s[-1]) if n >= 3 else None), None
    if head == "plugins":
        return ("plugin list" if n == 1 else "plugin" if s[-1] == "json" else None), None
    if head in ("volumes", "networks") and libpod:
        single = head[:-1]
        return (f"{single} list" if s[1:] == ("json",) else single if n == 3 and s[2] == "json" else None), None
    if head in ("volumes", "configs", "networks"):
        single = head[:-1]
        return (f"{single} list" if n == 1 else single if n == 2 else None), None
    if head == "pods" and libpod:
        return ("pod list" if s[1:] == ("json",) else "pod" if n == 3 and s[2] == "json" else None), None
    if head == "generate" or (head == "quadlets" and s[-1] == "file"):
        return "generated", None
    if s == ("swarm",) and not libpod:
        return "swarm", None
    if s in (("system", "df"), ("info",), ("events",)):
        return {"system": "disk usage", "info": "info", "events": "events"}[head], None
    return None, None


# Which redactions can change each kind of answer: with none of them on, and no visible
# scope, the answer is relayed untouched (no buffering, no parsing).
_REDACTIONS_FOR = {
    "container": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "container list": {"commands", "host-paths"},
    "image": {"env", "host-paths"},
    "image history": {"env"},
    "image list": set(),
    "service": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "task": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "pod": {"env", "log-options", "commands"},
    "pod list": set(),  # (no create command in the list)
    "volume": {"volume-options", "host-paths"},
    "disk usage": {"env", "commands", "host-paths", "volume-options"},
    "info": {"log-options", "swarm-tokens"},  # a swarm manager's spec (ResponseFilter.info)
    "swarm": {"swarm-tokens", "log-options"},
    "plugin": {"env", "commands"},
    "config": {"config-data"},
    "network": set(),
    "generated": {"env", "log-options", "volume-options", "commands", "host-paths"},
    "events": {"exec-commands"},
}
# ... and which name, count or hold objects a visible scope hides.
_SCOPED = {"container", "container list", "service", "service list", "task", "task list", "disk usage",
           "network", "network list", "events", "info", "image", "image list", "pod", "pod list"}


@dataclass(frozen=True)
class FilterPlan:
    target: Target  # what to forward: a list's label filters added
    method: str  # a filtered HEAD is forwarded as GET, so its Content-Length is the filtered one
    filter: ResponseFilter | None  # None: relay the answer untouched
    lookup: str | None = None  # resolve this kind of object (segment after the collection) first
    # Under a visible scope, what to ask the daemon before answering: "container", "service" or
    # "task" (an inspect: its own answer is the question, asked again among the visible objects
    # when it depends on invisible ones), or "visible containers" (counted for /info).
    ask_first: str | None = None


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
    ask_first = None
    if filtering.visible and kind in ("container", "service", "task"):
        ask_first = kind
    elif filtering.visible and kind == "info":
        ask_first = "visible containers"
    return FilterPlan(target, forwarded, ResponseFilter(filtering, kind, name), None, ask_first)


DEFAULT_FILTERING = Filtering()  # a profile without "redact" or "visible"
MAX_EVENT_BYTES = 1024 * 1024  # one /events object; dockerd's are a few hundred bytes


class Kept:
    """Filtered answers and events kept by ResponseFilter._kept, bounded in bytes: at most
    `budget` bytes of answers and their filtered forms in all, each at most a sixteenth of it.
    The oldest goes first: what is polled again soon stays."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[tuple, tuple[tuple[bytes, int, int], int]] = OrderedDict()  # key: (value, size)
        self.size = 0

    def get(self, key: tuple) -> tuple[bytes, int, int] | None:
        entry = self.entries.get(key)
        return None if entry is None else entry[0]

    def put(self, key: tuple, value: tuple[bytes, int, int], size: int) -> None:
        if size > self.budget // 16 or key in self.entries:
            return
        while self.size + size > self.budget:
            self.size -= self.entries.popitem(last=False)[1][1]
        self.entries[key] = (value, size)
        self.size += size

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0


# 2 MiB: a few hundred inspects (5 to 10 KB each, kept with their filtered form) or thousands of events.
KEPT = Kept(2 * 1024 * 1024)


def filter_transform(response_filter: ResponseFilter, max_bytes: int) -> ResponseTransform:
    """The relay's transform stage for one filtered exchange."""
    if response_filter.kind == "events":
        return ResponseTransform(event_line=response_filter.event_line, max_bytes=min(max_bytes, MAX_EVENT_BYTES))
    return ResponseTransform(document=response_filter.document, document_bytes=response_filter.document_bytes,
                             max_bytes=max_bytes)


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


def missing_message(kind: str, name: str) -> str:
    """dockerd's message for a missing container, service or task."""
    return f"No such container: {name}" if kind == "container" else f"{kind} {name} not found"


# The daemon's answer when a name is an ID prefix of several objects (dockerd before API 1.42:
# 500 "Multiple IDs ..."; after: 400 "multiple IDs ..."; Podman: 404 "more than one result ...").
_AMBIGUOUS = {"container": re.compile(r"(?i)multiple IDs found with provided prefix: |more than one result for container"),
              "service": re.compile(r"service .* is ambiguous \([0-9]+ matches found\)$", re.DOTALL),
              "task": re.compile(r"task .* is ambiguous \([0-9]+ matches found\)$", re.DOTALL)}


class AmongVisible(ObjectHidden):
    """The daemon's answer about a name depends on objects the profile cannot see: the name means
    an invisible object, or is ambiguous. It is resolved again among the visible objects only
    (visible_listing, resolve_among_visible). As an ObjectHidden it is a 404 about the name."""

    def __init__(self, kind: str, name: str, ambiguous: bool) -> None:
        super().__init__(404, missing_message(kind, name))
        self.ambiguous = ambiguous  # the daemon found the name ambiguous (else: it means an invisible object)


class Ambiguous(ObjectHidden):
    """Several visible objects have IDs that start with the name: the daemon's ambiguity answer
    (daemon_error), counting the visible ones only."""

    def __init__(self, kind: str, name: str, count: int) -> None:
        super().__init__(400, f"{kind} {name} is ambiguous ({count} matches found)")
        self.count = count


def resolved_object(kind: str, name: str, status: int, doc: Any, filtering: Filtering) -> str:
    """After Lookup asked the daemon about `name`: the full ID to forward the request with.
    Raises ObjectHidden for a missing object, AmongVisible when the answer depends on invisible
    objects, TransformError for a bad answer."""
    message = doc.get("message") if isinstance(doc, dict) else None
    if status != 200 and isinstance(message, str) and _AMBIGUOUS[kind].match(message):
        raise AmongVisible(kind, name, ambiguous=True)
    if status == 404:
        raise ObjectHidden(404, missing_message(kind, name))
    if status == 200 and not _visible_object(kind, doc, filtering):
        raise AmongVisible(kind, name, ambiguous=False)
    if status != 200:
        raise ObjectHidden(status if 400 <= status < 600 else 502,
                           message if isinstance(message, str) else f"the daemon answered {status}")
    full_id = _object(doc, "the answer").get("ID" if kind != "container" else "Id")
    if not isinstance(full_id, str) or not SAFE_SEGMENT.fullmatch(full_id):
        raise TransformError(f"the daemon's {kind} has no usable ID")
    return full_id


def _visible_object(kind: str, doc: Any, filtering: Filtering) -> bool:
    labels = {"container": "Config.Labels", "service": "Spec.Labels", "task": "Spec.ContainerSpec.Labels"}[kind]
    return labels_match(_at(doc, labels), filtering.visible, labels)


def visible_listing(kind: str, libpod: bool, version: str | None, filtering: Filtering) -> Target:
    """What to ask the daemon for the objects of `kind` the profile can see. Its answer is checked
    again (resolve_among_visible, visible_counts): the daemon is not trusted to filter."""
    labels = json.dumps({"label": filtering.label_filters()}, separators=(",", ":"))
    if kind == "container":
        return Target(version, ("libpod",) * libpod + ("containers", "json"), (("all", "true"), ("filters", labels)))
    if kind == "service":
        return Target(version, ("services",), (("filters", labels),))
    return Target(version, ("tasks",), ())  # a task's labels are its container's: dockerd cannot filter them


_LISTED = {"container": ("Id", "Labels"), "service": ("ID", "Spec.Labels"), "task": ("ID", "Spec.ContainerSpec.Labels")}


def _visible_items(kind: str, status: int, doc: Any, filtering: Filtering) -> list[dict]:
    if status != 200:
        raise TransformError(f"the daemon answered {status} to the list of {kind}s")
    if not isinstance(doc, list):
        raise TransformError(f"the list of {kind}s is not a JSON array")
    labels = _LISTED[kind][1]
    return [_object(item, f"[{i}]") for i, item in enumerate(doc)
            if labels_match(_at(item, labels), filtering.visible, f"[{i}].{labels}")]


def resolve_among_visible(kind: str, name: str, status: int, doc: Any, filtering: Filtering) -> str:
    """The full ID `name` means among the visible objects (`doc`: the answer to visible_listing),
    resolved as the daemon resolves a name: a full ID, then a name, then a unique ID prefix.
    Raises ObjectHidden (404) when it means none, Ambiguous when several IDs start with it."""
    found = []
    for item in _visible_items(kind, status, doc, filtering):
        ident = item.get(_LISTED[kind][0])
        if not isinstance(ident, str) or not SAFE_SEGMENT.fullmatch(ident):
            raise TransformError(f"a listed {kind} has no usable ID")
        found.append((ident, _names(kind, item)))
    for ident, names in found:
        if ident == name:
            return ident
    for ident, names in found:
        if name in names:
            return ident
    matches = [ident for ident, _ in found if ident.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ObjectHidden(404, missing_message(kind, name))
    raise Ambiguous(kind, name, len(matches))


def _names(kind: str, item: dict) -> set[str]:
    if kind == "container":  # dockerd's "/web" (and links' "/other/alias"), Podman's "web"
        names = _array(item.get("Names"), "Names")
        if not all(isinstance(name, str) for name in names):
            raise TransformError("a listed container's Names are not strings")
        return {name.removeprefix("/") for name in names}
    name = _at(item, "Spec.Name") if kind == "service" else item.get("Name")  # a task's own name, if any
    return {name} if isinstance(name, str) and name else set()


def visible_counts(status: int, doc: Any, filtering: Filtering) -> tuple[int, int, int, int]:
    """(all, running, paused, stopped) visible containers (`doc`: the answer to visible_listing),
    counted as dockerd and Podman count them for /info: any other state is stopped."""
    items = _visible_items("container", status, doc, filtering)
    running = sum(item.get("State") == "running" for item in items)
    paused = sum(item.get("State") == "paused" for item in items)
    return len(items), running, paused, len(items) - running - paused


def daemon_error(error: ObjectHidden, kind: str, name: str, headers: Mapping[str, str]) -> tuple[int, bytes]:
    """The status and body the daemon answers a missing (or an ambiguous) name with, byte for byte:
    Podman's (its answers carry Libpod-Api-Version) as its ErrorModel, dockerd's as {"message"}.
    `headers`: those of the daemon's answer just before (lowercase names)."""
    podman = "libpod-api-version" in headers
    if isinstance(error, Ambiguous) and kind == "container":
        if podman:
            return 404, _podman_error("container already exists",
                                      f"more than one result for container ID {name}: container already exists")
        version = re.fullmatch(r"([0-9]+)\.([0-9]+)", headers.get("api-version", ""))
        if version and (int(version.group(1)), int(version.group(2))) < (1, 42):
            status, message = 500, f"Multiple IDs found with provided prefix: {name}"
        else:
            status, message = 400, f"multiple IDs found with provided prefix: {name}"
    elif isinstance(error, Ambiguous):
        status, message = 400, error.message
    elif podman and kind == "container":
        return 404, _podman_error("no such container", f'no container with name or ID "{name}" found: no such container')
    else:
        status, message = 404, missing_message(kind, name)
    return status, json.dumps({"message": message}, separators=(",", ":")).encode() + b"\n"


def _podman_error(cause: str, message: str) -> bytes:
    return json.dumps({"cause": cause, "message": message, "response": 404}, separators=(",", ":")).encode() + b"\n"
