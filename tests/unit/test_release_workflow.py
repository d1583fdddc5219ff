""".github/workflows/release.yml stays a thin caller of build.sh (issue 22: item 6): it cannot run
here, so everything it builds, pushes and publishes must be what build.sh does, which the suite
exercises (tests/artifacts/test_publish.py publishes to a local registry as it does to ghcr.io)."""
import re

import yaml
from support import REPO

WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
# besides build.sh and .ci/run, the glue a release needs: packages for the checkout and gh,
# the registry login, the checksums and the release's files
GLUE = re.compile(r"^(apt-get |git config |echo \"\$GITHUB_TOKEN\" \| docker login ghcr\.io |cp dist/|cd dist && sha256sum "
                  r"|gh release )")


def steps():
    document = yaml.safe_load(WORKFLOW.read_text())
    return document, document["jobs"]["release"]["steps"]


def commands():
    for step in steps()[1]:
        for line in step.get("run", "").splitlines():
            yield line.strip()


def test_runs_on_a_version_tag_only():
    document, _ = steps()
    assert document[True] == {"push": {"tags": ["v*"]}}  # YAML 1.1 reads the key `on` as True


def test_every_command_is_build_sh_or_glue():
    for line in commands():
        assert line.startswith(("./build.sh", "bash .ci/run")) or GLUE.match(line) \
            or re.match(r"^PORTHOLE_IMAGE=\"ghcr\.io/[^ ]+\" \./build\.sh publish$", line), line
        assert not re.search(r"docker (build|push|manifest|tag|save|load)|pyinstaller|staticx|pip ", line), line


def test_tests_build_and_publish_through_build_sh():
    lines = list(commands())
    assert lines.index("bash .ci/run") < lines.index("./build.sh && ./build.sh --arch arm64")
    publish = [line for line in lines if line.endswith("./build.sh publish")]
    assert publish == ['PORTHOLE_IMAGE="ghcr.io/${GITHUB_REPOSITORY,,}:${GITHUB_REF_NAME#v}" ./build.sh publish']
    usage = (REPO / "build.sh").read_text()
    for command in re.findall(r"\./build\.sh(?: --arch \w+)? (\w[\w-]*)", "\n".join(lines)):
        assert re.search(r"^#   \./build\.sh %s\b" % command, usage, re.M), command
    uploaded = next(line for line in lines if line.startswith("gh release upload"))
    for name in ("dist/porthole ", "dist/porthole-arm64 ", "dist/*.spdx.json", "dist/SHA256SUMS"):
        assert name in uploaded + " ", name


def test_actions_are_pinned_by_commit():
    for step in steps()[1]:
        if "uses" in step:
            assert re.match(r"^[\w.-]+/[\w.-]+@[0-9a-f]{40}$", step["uses"]), step["uses"]
