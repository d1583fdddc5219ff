"""Values inside recorded text: a build step's CreatedBy, a classic build's Cmd, a create command.

Environment values also travel inside strings the daemon recorded: an image's history
(`/bin/sh -c #(nop)  ENV DB_PASSWORD=hunter2`, `|1 BUILD_TOKEN=tok /bin/sh -c make`), the Cmd of
the container the classic builder committed, ONBUILD triggers, and Podman's CreateCommand (`podman
run -e POD_SECRET=...`). These functions return the text without those values; filters.py
applies them to the fields that hold such text.

Invariants:
  1. What cannot be told from a value is removed with it. Docker writes these values unquoted
     (`ENV A=two words B=x`, `|2 A=two words B=x /bin/sh -c ...`), so a value's words cannot be
     told from the next NAME=: only names that cannot be part of a value are kept.
  2. Every function is idempotent: redacted text redacted again is unchanged.
  3. Text with nothing of these shapes is returned unchanged.
"""
from __future__ import annotations

import re
from typing import Sequence


# `|N` (the classic builder, Buildah) or `RUN |N` (BuildKit) opens a RUN step with N build
# arguments: `|2 A=x B=y /bin/sh -c make`, `RUN |1 K=V /bin/sh -c make # buildkit`.
_BUILD_ARGS = re.compile(r"(\s*(?:RUN\s+)?)\|([0-9]{1,6})", re.IGNORECASE)
# An instruction whose words hold values: `ENV K=V` (BuildKit), or what follows `#(nop)`.
_INSTRUCTION = re.compile(r"(\s*)(ENV|ARG|ONBUILD)(?=\s|$)\s*", re.IGNORECASE)
_NOP = "#(nop)"
# Where a RUN step's command begins: the default shell. (A custom SHELL or an exec-form RUN
# has no such mark: its command is removed with the values, Invariant 1.)
_SHELL = " /bin/sh -c "
_ASSIGNMENT = re.compile(r"[^\s=]+=")  # NAME= at the start of a word
_BUILD_ARGS_ITEM = re.compile(r"\|([0-9]{1,6})")  # the |N that opens a classic builder's Cmd


def redact_build_step(text: str) -> str:
    """A history entry's CreatedBy (or an ONBUILD trigger) without ENV, ARG and build-argument
    values: `ENV A=x B=y` -> `ENV A=`, `ARG A B=x` -> `ARG A B=`, `ENV K legacy value` -> `ENV K=`,
    `|2 A=x B=y /bin/sh -c make` -> `|2 A= /bin/sh -c make`."""
    kept = ""  # what is already read and needs nothing removed (a loop: no recursion to exhaust)
    while True:
        found = _BUILD_ARGS.match(text)
        if found:
            return kept + _without_build_args(text, found)
        found = _INSTRUCTION.match(text)
        if found and found.group(2).upper() == "ONBUILD":  # ONBUILD ENV K=V: the trigger follows
            kept, text = kept + text[:found.end()], text[found.end():]
            continue
        if found:
            return kept + _without_instruction_values(text, found)
        nop = text.find(_NOP)
        if nop < 0:
            return kept + text
        # `/bin/sh -c #(nop)  ENV K=V`: the shell (whichever) is before it, the instruction after
        kept, text = kept + text[:nop + len(_NOP)], text[nop + len(_NOP):]


def _without_build_args(text: str, found: re.Match) -> str:
    head, count, rest = text[:found.end()], int(found.group(2)), text[found.end():]
    shell = rest.rfind(_SHELL)  # the last one: a value holding it cannot end the values early
    if shell < 0:
        return head  # the command cannot be told from the values: neither is kept
    values, command = rest[:shell], rest[shell:]
    words = values[1:].split(" ") if values.startswith(" ") else None
    if words is not None and count >= 1 and _ASSIGNMENT.match(words[0]):
        # Only the first name: N words need not be N arguments (Buildah counts words), so a later
        # "NAME=" may be a value's words (`|2 A= X=`, from A=" X="): Invariant 1
        return head + " " + words[0].partition("=")[0] + "=" + command
    return head + command


def _without_instruction_values(text: str, found: re.Match) -> str:
    keyword, head, payload = found.group(2).upper(), text[:found.end()], text[found.end():]
    words = payload.split()
    if keyword == "ARG":  # ARG A B=x C: bare names before the first value are names
        kept = []
        for word in words:
            if "=" in word:
                kept.append(word.partition("=")[0] + "=")
                return head + " ".join(kept)
            kept.append(word)
        return text  # no value at all
    if not words or (len(words) == 1 and words[0].partition("=")[2] == ""):
        return text  # `ENV`, `ENV K=`, `ENV K`: nothing to remove
    return head + words[0].partition("=")[0] + "="  # ENV K=V ..., ENV K legacy value


def redact_build_cmd(cmd: Sequence[str]) -> list[str]:
    """The Cmd the classic builder records for a step: ["|1", "K=V", "/bin/sh", "-c", "make"]
    (the arguments are one item each) or ["/bin/sh", "-c", "#(nop) ", "ENV K=V"]."""
    out = list(cmd)
    count = _BUILD_ARGS_ITEM.fullmatch(out[0]) if out and out[0].startswith("|") else None
    if count:
        for i in range(1, min(int(count.group(1)), len(out) - 1) + 1):
            out[i] = out[i].partition("=")[0] + "="
        return out
    for i, item in enumerate(out):
        nop = item.find(_NOP)
        if nop >= 0:
            out[i] = item[:nop] + redact_build_step(item[nop:])
            out[i + 1:] = [redact_build_step(rest) for rest in out[i + 1:]]
            break
    return out


# Podman's CreateCommand is the podman command line the container was made with. Its flags are
# podman's (cmd/podman/common/create.go): -e/--env/--env-merge NAME=value, --log-opt key=value,
# --creds user:password, --decryption-key key:passphrase. Short flags combine (-ite K=V, -eK=V,
# -e=K=V); these take a value, so the rest of a combined word is theirs:
_SHORT_WITH_VALUE = frozenset("acehlmpuvw")
_LONG = {"--env": "env", "--env-merge": "env", "--creds": "secret", "--decryption-key": "secret",
         "--log-opt": "log"}


def _flag_value(value: str, what: str) -> str:
    if what == "secret":
        return ""
    return value.partition("=")[0] + "=" if "=" in value else value  # `-e NAME`: the host's value


def redact_create_command(args: Sequence[str], kinds: frozenset[str]) -> list[str]:
    """Podman's CreateCommand without the values of the flags of `kinds` ("env": -e, --env,
    --env-merge, and the credentials of --creds and --decryption-key; "log": --log-opt). A word
    is read as a flag wherever it stands (a value or the container's own command that looks like
    one loses its value too: more is removed, never less)."""
    out, pending = list(args), None
    for i, arg in enumerate(out):
        if pending is not None:
            out[i], pending = _flag_value(arg, pending), None
            continue
        name, equals, value = arg.partition("=")
        what = _LONG.get(name) if arg.startswith("--") else None
        if what is not None:
            if what not in kinds and not (what == "secret" and "env" in kinds):
                continue
            if equals:
                out[i] = name + "=" + _flag_value(value, what)
            else:
                pending = what
        elif arg.startswith("-") and not arg.startswith("--") and "env" in kinds:
            for j, char in enumerate(arg[1:], 1):
                if char == "e":
                    rest = arg[j + 1:]
                    prefix = arg[:j + 1] + ("=" if rest.startswith("=") else "")
                    rest = rest[1:] if rest.startswith("=") else rest
                    if rest:
                        out[i] = prefix + _flag_value(rest, "env")
                    else:
                        pending = "env"
                    break
                if char in _SHORT_WITH_VALUE:
                    break  # the rest of the word is that flag's value
    return out
