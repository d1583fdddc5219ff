"""The SBOMs build.sh writes (issue 22: item 3): dist/porthole.spdx.json beside the static
executable and /sbom.spdx.json in the image, SPDX 2.3 JSON, made from what each ships: every
listed file's checksum is the shipped file's, every shipped file is listed, and the Python and
Debian packages carry the versions and hashes the build pinned or installed."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from artifacts import (BUNDLE, REPO, layer_entries, pinned_requirements, sbom_files, spdx_problems,
                       staticx_members)

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


def check_packages(document, pypi_names, arch):
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


def check_binary_sbom(binary, arch, build_python):
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
        inner = json.loads(subprocess.run([str(build_python), "-c", READ_ARCHIVE, str(program)], capture_output=True,
                                          text=True, check=True).stdout)
    finally:
        program.unlink()
    want.update(("porthole!/porthole!/" + name, digest) for name, digest in inner.items())
    assert listed == want
    assert any(name.endswith("/libssl.so.3") for name in listed) and "porthole!/libc.so.6" in listed
    top = packages_by_purl(document)["pkg:generic/porthole"]
    assert top["checksums"] == [{"algorithm": "SHA256", "value": hashlib.sha256(binary.read_bytes()).hexdigest()}]
    check_packages(document, ("h11", "pyinstaller", "staticx"), arch)
    return document


def test_binary_sbom_lists_what_ships(porthole_binary):
    check_binary_sbom(porthole_binary, "amd64", BUILD_PYTHON)


@pytest.mark.docker
def test_image_sbom_lists_what_ships(dockerd, porthole_image):
    entries = layer_entries(dockerd, porthole_image)
    shipped = (BUNDLE / "sbom.spdx.json").read_bytes()
    assert entries["sbom.spdx.json"][:2] == ("file", 0o444)
    assert entries["sbom.spdx.json"][4] == hashlib.sha256(shipped).hexdigest()
    document = json.loads(shipped)
    assert spdx_problems(document) == []
    files = {name: entry[4] for name, entry in entries.items() if entry[0] == "file" and name != "sbom.spdx.json"}
    assert sbom_files(document) == files
    assert {"lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "_internal/libssl.so.3"} <= files.keys()
    check_packages(document, ("h11", "pyinstaller"), "amd64")


def test_spdx_problems_finds_what_is_missing():
    """The checker the tests above rely on, on a document missing what SPDX 2.3 requires."""
    broken = {"spdxVersion": "SPDX-2.2", "SPDXID": "SPDXRef-DOCUMENT", "name": "x", "documentNamespace": "x#y",
              "creationInfo": {"created": "yesterday", "creators": []},
              "files": [{"SPDXID": "SPDXRef-f", "fileName": "./f",
                         "checksums": [{"algorithm": "SHA256", "value": "0" * 64}]}],
              "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                                 "relatedSpdxElement": "SPDXRef-nothing"}]}
    problems = spdx_problems(broken)
    for expected in ("spdxVersion", "dataLicense", "documentNamespace", "creationInfo.created",
                     "creationInfo.creators", "no SHA1", "undefined", "documentDescribes"):
        assert any(expected in problem for problem in problems), (expected, problems)
