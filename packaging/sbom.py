"""The SPDX 2.3 JSON SBOM of what build.sh shipped: dist/porthole.spdx.json beside the static
executable, /sbom.spdx.json in the image.

Made from the artifact itself, not from a list: every file it ships (for the executable, the
members of staticx's archive and of PyInstaller's archive inside it, named OUTER!/INNER; for the
image, the files of its root) with its SHA-1 and SHA-256, each library tied to the Debian package
that installed it (dpkg, by file name; version and purl), and the Python packages frozen in or
used to build it with the version and PyPI sha256 hashes requirements-build.txt pins.

    python sbom.py binary|image ARTIFACT OUTPUT --requirements FILE --version V --commit C \
        --arch ARCH --source URL      (SOURCE_DATE_EPOCH: the document's creation time)

Run with the build venv's Python (it reads PyInstaller's archive with PyInstaller's reader);
its output is a function of its inputs alone, so two builds of one commit give one SBOM."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# What a Debian package ships, in the words a reader looks for.
UPSTREAM = {"libc6": "GNU C Library (glibc) and its dynamic loader", "libssl3": "OpenSSL",
            "libpython3.11": "CPython %s" % platform.python_version(),
            "libpython3.11-stdlib": "CPython %s standard library" % platform.python_version(),
            "zlib1g": "zlib", "libexpat1": "Expat"}
# The Python packages frozen in (h11, and PyInstaller's bootloader at the head of the program)
# or wrapping the executable (staticx's bootloader and its libnssfix.so).
PYPI = {"binary": ("h11", "pyinstaller", "staticx"), "image": ("h11", "pyinstaller")}
PYPI_ROLE = {"h11": "HTTP/1.1 parser, frozen into the program",
             "pyinstaller": "PyInstaller: its bootloader starts the program; the Python runtime is frozen by it",
             "staticx": "staticx: its bootloader and libnssfix.so make the executable static"}
STATICX_FILES = {"libnssfix.so"}


def pinned(requirements: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, [sha256, ...])} from a pip-compile file with hashes."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in requirements.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\]+)", line)
        if pin:
            name = pin.group(1).lower()
            found[name] = (pin.group(2), [])
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            if name:
                found[name][1].append(digest)
    return found


def staticx_members(binary: Path) -> list[tuple[str, bytes]]:
    """The regular files of the executable's staticx archive, and those of PyInstaller's archive
    in the program among them."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive.tar"
        subprocess.run(["objcopy", "--dump-section", ".staticx.archive=%s" % archive, str(binary),
                        str(Path(tmp) / "rest")], check=True)
        with tarfile.open(archive) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
        files = []
        for name, data in members:
            files.append(("porthole!/" + name, data))
            if name == "porthole":
                program = Path(tmp) / "program"
                program.write_bytes(data)
                files += [("porthole!/porthole!/" + inner, data) for inner, data in pyinstaller_binaries(program)]
        return files


def pyinstaller_binaries(program: Path) -> list[tuple[str, bytes]]:
    """The shared libraries and data files (not Python code) in PyInstaller's archive."""
    from PyInstaller.archive.readers import CArchiveReader
    reader = CArchiveReader(str(program))
    return [(name, reader.extract(name)) for name, entry in sorted(reader.toc.items()) if entry[4] in ("b", "x", "n", "d")]


def root_files(root: Path) -> list[tuple[str, bytes]]:
    return [(path.relative_to(root).as_posix(), path.read_bytes())
            for path in sorted(root.rglob("*")) if path.is_file() and not path.is_symlink()
            and path.name != "sbom.spdx.json"]


def debian_owner(basename: str, cache: dict) -> dict | None:
    """The Debian package that installed a file of this name in a library directory."""
    if basename not in cache:
        found = subprocess.run(["dpkg-query", "-S", "*/" + basename], capture_output=True, text=True)
        owner = None
        for line in found.stdout.splitlines():
            package, _, path = line.partition(": ")
            if os.path.basename(path) == basename and ", " not in package and re.match(r"/(usr/)?lib", path):
                owner = package
                break
        if owner:
            fields = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Architecture}\t${source:Package}",
                                     owner], capture_output=True, text=True, check=True).stdout.split("\t")
            cache[basename] = dict(zip(("name", "version", "arch", "source"), fields))
        else:
            cache[basename] = None
    return cache[basename]


def spdx_id(text: str) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", text)


def build(kind: str, artifact: Path, args: argparse.Namespace) -> dict:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    shipped = staticx_members(artifact) if kind == "binary" else root_files(artifact)
    top_data = artifact.read_bytes() if kind == "binary" else (artifact / "porthole").read_bytes()
    top = {"SPDXID": "SPDXRef-Package-porthole", "name": "porthole", "versionInfo": args.version,
           "supplier": "NOASSERTION", "downloadLocation": "git+%s@%s" % (args.source, args.commit) if "://" in args.source
           else "NOASSERTION", "filesAnalyzed": False, "licenseDeclared": "Apache-2.0",
           "primaryPackagePurpose": "APPLICATION",
           "summary": "the static executable dist/porthole" if kind == "binary" else "the image's root (its /porthole)",
           "sourceInfo": "commit %s" % args.commit,
           "checksums": [{"algorithm": "SHA256", "value": hashlib.sha256(top_data).hexdigest()}],
           "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                             "referenceLocator": "pkg:generic/porthole@%s" % args.version}]}
    packages, files, relationships = [top], [], [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": top["SPDXID"]}]
    pins = pinned(args.requirements)
    for name in PYPI[kind]:
        version, hashes = pins[name]
        package = {"SPDXID": spdx_id("Package-pypi-" + name), "name": name, "versionInfo": version,
                   "supplier": "NOASSERTION", "downloadLocation": "https://pypi.org/project/%s/%s/" % (name, version),
                   "filesAnalyzed": False, "summary": PYPI_ROLE[name],
                   "sourceInfo": "pinned with its PyPI sha256 hashes in requirements-build.txt",
                   "checksums": [{"algorithm": "SHA256", "value": digest} for digest in sorted(hashes)],
                   "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                     "referenceLocator": "pkg:pypi/%s@%s" % (name, version)}]}
        packages.append(package)
        relationships.append({"spdxElementId": top["SPDXID"], "relationshipType": "CONTAINS",
                              "relatedSpdxElement": package["SPDXID"]})
    debian: dict[str, dict] = {}
    cache: dict = {}
    for name, data in shipped:
        owner = debian_owner(name.rsplit("/", 1)[-1], cache)
        file_id = spdx_id("File-" + name.replace("!", "-"))
        files.append({"SPDXID": file_id, "fileName": "./" + name,
                      "checksums": [{"algorithm": "SHA1", "value": hashlib.sha1(data).hexdigest()},
                                    {"algorithm": "SHA256", "value": hashlib.sha256(data).hexdigest()}]})
        if owner:
            package_id = spdx_id("Package-deb-" + owner["name"])
            if owner["name"] not in debian:
                purl = "pkg:deb/debian/%s@%s?arch=%s&distro=debian-12" % (owner["name"], owner["version"], owner["arch"])
                debian[owner["name"]] = {
                    "SPDXID": package_id, "name": owner["name"], "versionInfo": owner["version"],
                    "supplier": "Organization: Debian", "downloadLocation": "https://snapshot.debian.org/package/%s/%s/" % (
                        owner["source"] or owner["name"], owner["version"]),
                    "filesAnalyzed": False, "summary": UPSTREAM.get(owner["name"], owner["name"]),
                    "sourceInfo": "Debian package %s %s (%s), source package %s" % (
                        owner["name"], owner["version"], owner["arch"], owner["source"] or owner["name"]),
                    "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                      "referenceLocator": purl}]}
                relationships.append({"spdxElementId": top["SPDXID"], "relationshipType": "CONTAINS",
                                      "relatedSpdxElement": package_id})
        elif name.rsplit("/", 1)[-1] in STATICX_FILES:
            package_id = spdx_id("Package-pypi-staticx")
        else:
            package_id = top["SPDXID"]  # the program, its rules, PyInstaller's zipped standard library
        relationships.append({"spdxElementId": package_id, "relationshipType": "CONTAINS", "relatedSpdxElement": file_id})
    packages += [debian[name] for name in sorted(debian)]
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return {"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
            "name": "porthole-%s-%s-%s" % (args.version, kind, args.arch),
            "documentNamespace": "https://spdx.org/spdxdocs/porthole-%s-%s-%s-%s" % (args.version, args.commit, kind, args.arch),
            "creationInfo": {"created": created, "creators": ["Tool: porthole-build.sh-%s" % args.version]},
            "documentDescribes": [top["SPDXID"]],
            "packages": packages, "files": files, "relationships": relationships}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("binary", "image"))
    parser.add_argument("artifact", type=Path)
    parser.add_argument("output", type=Path)
    for option in ("--version", "--commit", "--arch", "--source"):
        parser.add_argument(option, required=True)
    parser.add_argument("--requirements", type=Path, required=True)
    args = parser.parse_args()
    document = build(args.kind, args.artifact, args)
    args.output.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
