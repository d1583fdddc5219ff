"""The SBOMs build.sh writes (issue 22: item 3): dist/porthole.spdx.json beside the static
executable and /sbom.spdx.json in the image, SPDX 2.3 JSON, made from what each ships: every
listed file's checksum is the shipped file's, every shipped file is listed, and the Python and
Debian packages carry the versions and hashes the build pinned or installed."""
from __future__ import annotations

import pytest

from artifacts import BUNDLE, check_binary_sbom, check_image_sbom, sbom_files, spdx_problems


def test_binary_sbom_lists_what_ships(porthole_binary):
    check_binary_sbom(porthole_binary, "amd64")


@pytest.mark.docker
def test_image_sbom_lists_what_ships(dockerd, porthole_image):
    document = check_image_sbom(dockerd, porthole_image, BUNDLE, "amd64")
    assert {"lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "_internal/libssl.so.3"} <= \
        sbom_files(document).keys()


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
