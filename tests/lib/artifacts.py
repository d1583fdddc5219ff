"""The artifacts tests/artifacts/ checks: the frozen executable dist/porthole (and dist/porthole-arm64),
built by ./build.sh when older than what it is built from (build.sh's own rule, is_fresh), the image
built from it into the private dockerd (`./build.sh image`, `./build.sh check`), and containers of
it, run hardened and watched.

Public API
----------
REPO, BINARY, BUNDLE, IMAGE, SOCK_GID, HARDENED
BUILD_INPUTS                            the files the build reads (build.sh's is_fresh list)
tail(text, n=4000) -> str               the end of a long output, for assertion messages
build_sh(*args, env=None, cwd=REPO, timeout=300) -> CompletedProcess   ./build.sh ARGS, text output
build_env(dockerd, image=IMAGE, **extra) -> dict   build.sh's environment for the private daemon
ensure_binary(arch=None, timeout=600) -> Path   dist/porthole (or dist/porthole-ARCH), rebuilt if stale
proxy_version() -> str                  porthole's VERSION, read as build.sh reads it
run_check(dockerd, image=IMAGE, arch=(), **extra) -> (exit status, summary)   ./build.sh check
check_cli_through(host, direct, container_name, image)   the docker CLI reads through `host`
listener_dir() / wait_socket(path) / wait_health(docker_direct, cid, want) / layer_entries(dockerd, image)
image_config(dockerd, image) -> dict    the image's config as it holds it (`docker save`): what an engine
                                        older than Docker 25 leaves out of `docker image inspect` too
HEALTHCHECK_SCHEDULE                    the image's HEALTHCHECK, as its config holds it
engine_api_version(dockerd) -> tuple    the daemon's API version, (1, 41) for Debian 12's 20.10
spdx_problems(document) -> list[str]    what an SPDX 2.3 JSON document lacks or gets wrong (empty: valid)
sbom_files(document) -> {fileName: sha256}   the files an SBOM lists, with their SHA-256
pinned_requirements(path) -> {name: (version, [sha256...])}   the pins and hashes of a pip-compile file
staticx_members(binary) -> {name: bytes}   the regular files in a static executable's staticx archive
                                        (elf_section(binary, name) -> bytes, for any machine's ELF)
check_binary_sbom(binary, arch) -> dict  dist/porthole[-ARCH].spdx.json is valid and lists what ships
check_sbom_packages(document, pypi_names, arch)   its PyPI and Debian packages, versions and hashes
check_image_sbom(dockerd, image, bundle, arch) -> dict   the image's /sbom.spdx.json: the bundle's, and it
                                        lists every file of the image with its checksum
Registry().start(tmpdir) / .stop()      Debian's docker-registry (distribution 2.8) on 127.0.0.1:port
registry.address, .manifest(name, reference) -> (media type, digest, dict), .stored() -> {path: (size, mtime)}
"""

from __future__ import annotations

import ast
import functools
import hashlib
import http.client
import io
import json
import os
import re
import struct
import subprocess
import tarfile
from pathlib import Path

import support

REPO = support.REPO
BINARY = REPO / "dist" / "porthole"
BUNDLE = REPO / "dist" / "porthole-root"  # the image's root, `./build.sh bundle`
IMAGE = "porthole-test/porthole:latest"
SOCK_GID = support.DEFAULT_SOCK_GID
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none"]
SECOND = 10**9  # image configs count in nanoseconds
# every 30 s, and every second while the container starts (Docker >= 25; issue "(3 of 5)", item 2)
HEALTHCHECK_SCHEDULE = {"Test": ["CMD", "/porthole", "--healthcheck"], "Interval": 30 * SECOND, "Timeout": 5 * SECOND,
                        "StartPeriod": 30 * SECOND, "StartInterval": 1 * SECOND, "Retries": 3}
# what the build reads (build.sh's is_fresh): copied for the reproducibility builds, and a binary
# older than any of them is rebuilt
BUILD_INPUTS = ("proxy.py", *sorted(str(p.relative_to(REPO)) for p in (REPO / "porthole").rglob("*.py")),
                "rules.json", "build.sh", "requirements-build.txt", "patches/staticx-forward-signals.patch",
                "packaging/sbom.py")


def tail(text, n=4000):
    return text[-n:] if text else ""


def build_sh(*args, env=None, cwd=REPO, timeout=300):
    return subprocess.run(["./build.sh", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def build_env(dockerd, image=IMAGE, **extra):
    return support.docker_env(dockerd.url, {"PORTHOLE_IMAGE": image, **extra})


def _newer_than_inputs(path: Path) -> bool:
    built = path.stat().st_mtime
    return all(built > (REPO / name).stat().st_mtime for name in ("porthole", *BUILD_INPUTS))


@functools.lru_cache(maxsize=None)
def ensure_binary(arch: str | None = None, timeout: float = 600) -> Path:
    """dist/porthole (dist/porthole-ARCH with `arch`), (re)built with ./build.sh when older than
    any of its inputs; once per session."""
    binary = BINARY if arch is None else REPO / "dist" / ("porthole-" + arch)
    arch_args = () if arch is None else ("--arch", arch)

    def fresh():
        return binary.is_file() and os.access(binary, os.X_OK) and _newer_than_inputs(binary)

    if not fresh():
        r = build_sh(*arch_args, timeout=timeout)
        command = " ".join(["./build.sh", *arch_args])
        assert r.returncode == 0, "%s failed (%s):\n%s\n%s" % (command, r.returncode, tail(r.stdout), tail(r.stderr))
        assert fresh(), "%s succeeded but %s is missing or stale" % (command, binary.relative_to(REPO))
    return binary


def proxy_version() -> str:
    """VERSION of porthole/__init__.py, read as build.sh's version() reads it."""
    tree = ast.parse((REPO / "porthole" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "VERSION":
            return node.value.value
    raise AssertionError("no VERSION in porthole/__init__.py")


def run_check(dockerd, image=IMAGE, arch=(), **extra):
    """`./build.sh [ARCH...] check` of `image` in the private daemon: (exit status, its JSON summary)."""
    r = build_sh(*arch, "check", env=build_env(dockerd, image, **extra))
    try:
        summary = json.loads(r.stdout)
    except ValueError:
        raise AssertionError("./build.sh check printed no JSON (exit %s):\n%s\n%s" % (r.returncode, r.stdout, r.stderr))
    return r.returncode, summary


def check_cli_through(host: str, direct: str, container_name: str, image: str) -> None:
    """The docker CLI reads through the proxy at `host`; `docker run` is refused and changes nothing."""
    ps = support.docker_cli(host, "ps", "-a", "--format", "{{.Names}}", check=True)
    assert container_name in ps.stdout.split(), ps.stdout
    server = support.docker_cli(direct, "version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
    through = support.docker_cli(host, "version", "--format", "{{.Server.Version}}", check=True).stdout.strip()
    assert server and through == server
    inspected = json.loads(support.docker_cli(host, "inspect", container_name, check=True).stdout)
    assert inspected[0]["Name"] == "/" + container_name

    before = support.docker_cli(direct, "ps", "-aq", "--no-trunc", check=True).stdout.split()
    run = support.docker_cli(host, "run", "--rm", "--network", "none", image, "true", timeout=60)
    assert run.returncode != 0, "docker run through the proxy succeeded:\n" + run.stdout
    assert "porthole:" in run.stderr, run.stderr
    after = support.docker_cli(direct, "ps", "-aq", "--no-trunc", check=True).stdout.split()
    assert sorted(after) == sorted(before)


def inspect(docker_direct, cid):
    return docker_direct.api.inspect_container(cid)


def wait_health(docker_direct, cid, want, timeout=45.0):
    """Wait until the container's health status is `want`; assert with the health log otherwise."""
    last = {}

    def reached():
        state = inspect(docker_direct, cid)["State"]
        last["state"] = state
        return (state.get("Health") or {}).get("Status") == want or not state["Running"]

    support.wait_until(reached, timeout, 0.25)
    state = last["state"]
    health = state.get("Health") or {}
    assert state["Running"], "container stopped (exit %s): %s" % (state.get("ExitCode"), state.get("Error"))
    assert health.get("Status") == want, "health %r, not %r, after %ss; log: %s" % (
        health.get("Status"), want, timeout, json.dumps(health.get("Log", [])[-3:], indent=1))


def listener_dir():
    """A 0777 directory for the container's unix listener (mounted at /run/porthole)."""
    return support.short_tmpdir("ph-ctr-", 0o777)


def wait_socket(path, timeout=20.0):
    assert support.wait_until(lambda: support.can_connect(path), timeout, 0.1), \
        "%s never accepted connections" % path


def layer_entries(dockerd, image):
    """{path: (type, mode, uid, gid, sha256 of a file or None)} over all layers of `docker save`
    (legacy or OCI layout)."""
    saved = subprocess.run([support.DOCKER_CLI, "save", image], env=support.docker_env(dockerd.url),
                           capture_output=True, timeout=120, check=True).stdout
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        for member in outer.getmembers():
            if not member.isfile() or not (member.name.endswith("layer.tar") or member.name.startswith("blobs/")):
                continue
            data = outer.extractfile(member).read()
            try:
                layer = tarfile.open(fileobj=io.BytesIO(data))
            except tarfile.ReadError:
                continue  # config or manifest blob
            with layer:
                for m in layer.getmembers():
                    name = m.name.rstrip("/").removeprefix("./")
                    if not name:
                        continue
                    kind = "dir" if m.isdir() else "file" if m.isfile() else "other:%s" % m.type
                    digest = hashlib.sha256(layer.extractfile(m).read()).hexdigest() if m.isfile() else None
                    entries[name] = (kind, m.mode & 0o7777, m.uid, m.gid, digest)
    return entries


def image_config(dockerd, image):
    """The image's config ("config" of its config blob) as the image holds it, from `docker save`:
    an engine older than Docker 25 shows no Healthcheck.StartInterval in `docker image inspect`."""
    saved = subprocess.run([support.DOCKER_CLI, "save", image], env=support.docker_env(dockerd.url),
                           capture_output=True, timeout=120, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(saved)) as outer:
        [entry] = json.load(outer.extractfile("manifest.json"))
        return json.load(outer.extractfile(entry["Config"]))["config"]


def engine_api_version(dockerd):
    """The daemon's API version as a tuple: (1, 44) and later honour a health check's start interval."""
    version = support.docker_cli(dockerd.url, "version", "--format", "{{.Server.APIVersion}}", check=True)
    return tuple(int(part) for part in version.stdout.strip().split("."))


# SPDX 2.3 (https://spdx.github.io/spdx-spec/v2.3/): what every document, package, file and
# relationship must have
SPDX_ID = re.compile(r"^SPDXRef-[A-Za-z0-9.-]+$")
SPDX_CHECKSUM_LENGTHS = {"SHA1": 40, "SHA256": 64, "SHA512": 128, "MD5": 32}
SPDX_RELATIONSHIPS = {"DESCRIBES", "DESCRIBED_BY", "CONTAINS", "CONTAINED_BY", "DEPENDS_ON", "GENERATED_FROM"}


def spdx_problems(document: dict) -> list:
    """The required fields of SPDX 2.3 JSON that `document` lacks or gets wrong."""
    problems = []

    def need(ok, what):
        if not ok:
            problems.append(what)

    need(document.get("spdxVersion") == "SPDX-2.3", "spdxVersion is not SPDX-2.3")
    need(document.get("dataLicense") == "CC0-1.0", "dataLicense is not CC0-1.0")
    need(document.get("SPDXID") == "SPDXRef-DOCUMENT", "SPDXID is not SPDXRef-DOCUMENT")
    need(bool(document.get("name")), "no name")
    namespace = document.get("documentNamespace", "")
    need(re.match(r"^[a-z]+://", namespace) and "#" not in namespace, "documentNamespace is not a URI without #")
    info = document.get("creationInfo") or {}
    need(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", info.get("created", "")), "creationInfo.created")
    need(info.get("creators") and all(re.match(r"^(Tool|Organization|Person): \S", c) for c in info["creators"]),
         "creationInfo.creators")

    def checksums(where, items, needed=()):
        algorithms = [c.get("algorithm") for c in items]
        for item in items:
            need(len(item.get("value", "")) == SPDX_CHECKSUM_LENGTHS.get(item.get("algorithm"), -1)
                 and re.match(r"^[0-9a-f]+$", item["value"]), f"{where}: checksum {item}")
        for algorithm in needed:
            need(algorithm in algorithms, f"{where}: no {algorithm} checksum")

    ids = ["SPDXRef-DOCUMENT"]
    for package in document.get("packages", []):
        where = "package %s" % package.get("SPDXID")
        ids.append(package.get("SPDXID"))
        need(SPDX_ID.match(package.get("SPDXID", "")), f"{where}: SPDXID")
        need(package.get("name") and package.get("downloadLocation"), f"{where}: name or downloadLocation")
        need(package.get("filesAnalyzed", True) is False or "packageVerificationCode" in package,
             f"{where}: files analysed without a packageVerificationCode")
        checksums(where, package.get("checksums", []))
    for file in document.get("files", []):
        where = "file %s" % file.get("SPDXID")
        ids.append(file.get("SPDXID"))
        need(SPDX_ID.match(file.get("SPDXID", "")) and file.get("fileName", "").startswith("./"), f"{where}: id, name")
        checksums(where, file.get("checksums", []), needed=("SHA1",))
    need(len(ids) == len(set(ids)), "SPDXIDs repeat")
    related = set()
    for relationship in document.get("relationships", []):
        need(relationship.get("relationshipType") in SPDX_RELATIONSHIPS, f"relationship {relationship}")
        for end in ("spdxElementId", "relatedSpdxElement"):
            need(relationship.get(end) in ids, f"relationship {relationship}: {end} undefined")
            related.add(relationship.get(end))
    need(set(document.get("documentDescribes", [])) <= set(ids) and document.get("documentDescribes"),
         "documentDescribes")
    need(set(ids) <= related, "elements no relationship names: %s" % sorted(set(ids) - related))
    return problems


def sbom_files(document: dict) -> dict:
    return {f["fileName"].removeprefix("./"): next(c["value"] for c in f["checksums"] if c["algorithm"] == "SHA256")
            for f in document["files"]}


def pinned_requirements(path: Path) -> dict:
    pins, name = {}, None
    for line in path.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if pin:
            name = pin.group(1).lower()
            pins[name] = (pin.group(2), [])
        hashed = re.search(r"--hash=sha256:([0-9a-f]{64})", line)
        if hashed and name:
            pins[name][1].append(hashed.group(1))
    return pins


def elf_section(binary: Path, wanted: str) -> bytes:
    """The contents of a section of a 64-bit little-endian ELF file, of any machine."""
    data = binary.read_bytes()
    assert data[:6] == b"\x7fELF\x02\x01", "%s: not a 64-bit little-endian ELF file" % binary
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(index):  # (name offset, file offset, size)
        at = shoff + index * shentsize
        return struct.unpack_from("<I", data, at)[0], *struct.unpack_from("<QQ", data, at + 0x18)

    _, names_at, _ = header(shstrndx)
    for index in range(shnum):
        name_at, offset, size = header(index)
        name = data[names_at + name_at:data.index(b"\0", names_at + name_at)].decode()
        if name == wanted:
            return data[offset:offset + size]
    raise AssertionError("%s has no section %s" % (binary, wanted))


def staticx_members(binary: Path) -> dict:
    with tarfile.open(fileobj=io.BytesIO(elf_section(binary, ".staticx.archive"))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# what every SBOM must name: the runtime's parts (CPython, OpenSSL, glibc with the loader) and
# the Python packages frozen in
DEBIAN_PACKAGES = {"libpython3.11", "libssl3", "libc6"}
# build.sh's build venv (PORTHOLE_BUILD_VENV), which has PyInstaller
BUILD_PYTHON = Path(os.environ.get("PORTHOLE_BUILD_VENV", REPO / ".venv-build")) / "bin" / "python"
# the program PyInstaller archived, its shared libraries and data read back with its own reader
READ_ARCHIVE = """
import hashlib, json, sys
from PyInstaller.archive.readers import CArchiveReader
reader = CArchiveReader(sys.argv[1])
print(json.dumps({name: hashlib.sha256(reader.extract(name)).hexdigest() for name, entry in reader.toc.items()
                  if entry[4] in "bxnd"}))
"""


def packages_by_purl(document):
    return {ref["referenceLocator"].split("@")[0]: package for package in document["packages"]
            for ref in package.get("externalRefs", []) if ref["referenceType"] == "purl"}


def check_sbom_packages(document, pypi_names, arch):
    """The PyPI packages with requirements-build.txt's versions and hashes; the Debian ones with
    the versions dpkg installed (for another architecture: its purl names it)."""
    packages = packages_by_purl(document)
    pins = pinned_requirements(REPO / "requirements-build.txt")
    for name in pypi_names:
        package = packages["pkg:pypi/" + name]
        assert package["versionInfo"] == pins[name][0]
        assert sorted(c["value"] for c in package["checksums"]) == sorted(pins[name][1])
    for name in DEBIAN_PACKAGES:
        package = packages["pkg:deb/debian/" + name]
        purl = package["externalRefs"][0]["referenceLocator"]
        assert "?arch=%s&" % arch in purl, purl
        if arch == "amd64":
            installed = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True,
                                       check=True).stdout
            assert package["versionInfo"] == installed


def check_binary_sbom(binary: Path, arch: str) -> dict:
    """The SBOM beside `binary` is valid SPDX 2.3 and lists every file it ships, with its checksum."""
    document = json.loads(binary.with_name(binary.name + ".spdx.json").read_text())
    assert spdx_problems(document) == []
    listed = sbom_files(document)
    members = staticx_members(binary)
    assert members, "no staticx archive in %s" % binary
    # every member of staticx's archive, and every library in PyInstaller's archive inside it
    want = {"porthole!/" + name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    program = REPO / "dist" / ("sbom-check-program-" + arch)
    program.write_bytes(members["porthole"])
    try:
        inner = json.loads(subprocess.run([str(BUILD_PYTHON), "-c", READ_ARCHIVE, str(program)], capture_output=True,
                                          text=True, check=True).stdout)
    finally:
        program.unlink()
    want.update(("porthole!/porthole!/" + name, digest) for name, digest in inner.items())
    assert listed == want
    assert any(name.endswith("/libssl.so.3") for name in listed) and "porthole!/libc.so.6" in listed
    top = packages_by_purl(document)["pkg:generic/porthole"]
    assert top["checksums"] == [{"algorithm": "SHA256", "value": hashlib.sha256(binary.read_bytes()).hexdigest()}]
    check_sbom_packages(document, ("h11", "pyinstaller", "staticx"), arch)
    return document


def check_image_sbom(dockerd, image: str, bundle: Path, arch: str) -> dict:
    entries = layer_entries(dockerd, image)
    shipped = (bundle / "sbom.spdx.json").read_bytes()
    assert entries["sbom.spdx.json"][:2] == ("file", 0o444)
    assert entries["sbom.spdx.json"][4] == hashlib.sha256(shipped).hexdigest()
    document = json.loads(shipped)
    assert spdx_problems(document) == []
    files = {name: entry[4] for name, entry in entries.items() if entry[0] == "file" and name != "sbom.spdx.json"}
    assert sbom_files(document) == files
    check_sbom_packages(document, ("h11", "pyinstaller"), arch)
    return document


REGISTRY_BINARY = "/usr/bin/docker-registry"  # Debian's docker-registry (build.sh's TEST_PACKAGES)
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json")


class Registry:
    """A private registry on 127.0.0.1 (plain HTTP, which the engine allows for loopback), its
    storage in a temporary directory; stopped (and its storage removed) by stop()."""

    def start(self, tmpdir: Path, timeout: float = 30.0) -> "Registry":
        self.storage = Path(tmpdir) / "storage"
        self.storage.mkdir(parents=True)
        port = support.free_port()
        self.address = "127.0.0.1:%d" % port
        config = Path(tmpdir) / "config.yml"
        config.write_text("version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                          "  delete:\n    enabled: true\nhttp:\n  addr: %s\n" % (self.storage, self.address))
        self.log = open(Path(tmpdir) / "registry.log", "wb")
        self.proc = subprocess.Popen([REGISTRY_BINARY, "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        assert support.wait_until(lambda: self._get("/v2/")[0] == 200 or self.proc.poll() is not None, timeout, 0.1)
        assert self.proc.poll() is None, (Path(tmpdir) / "registry.log").read_text()
        return self

    def _get(self, path, accept=()):
        try:
            connection = http.client.HTTPConnection(self.address, timeout=10)
            connection.request("GET", path, headers={"Accept": ", ".join(accept)} if accept else {})
            answer = connection.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read()
        except OSError:
            return None, {}, b""

    def manifest(self, name: str, reference: str):
        """(media type, digest, document) of the manifest or list `name:reference` in the registry."""
        status, headers, body = self._get("/v2/%s/manifests/%s" % (name, reference), MANIFEST_TYPES)
        assert status == 200, (status, body[:300])
        return headers["Content-Type"], headers["Docker-Content-Digest"], json.loads(body)

    def stored(self) -> dict:
        """{path: (size, mtime_ns)} of every file the registry stores: a push that writes anything shows."""
        return {str(p.relative_to(self.storage)): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in self.storage.rglob("*") if p.is_file()}

    def stop(self) -> None:
        support.kill_group(self.proc)
        self.log.close()
