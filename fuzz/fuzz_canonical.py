"""Fuzz target: canonicalize_target + decide (porthole.core) with the shipped rules.json.

The input is a raw request target (the bytes between the method and ' HTTP/1.1').

Invariants (fuzz_common.InvariantViolation or any other exception is a finding):
  * canonicalize_target and decide raise nothing but Refusal; canonicalisation
    refusals are 400 with close=True;
  * an accepted target round-trips: canonicalize_target(target.forward_form()) == target,
    and the forward form is a fixed point;
  * no decoded segment is '', '.', '..' or holds '/', '%', '\\'; the forward form's path has
    only [A-Za-z0-9_.:@-] segments;
  * for every profile and for GET/HEAD/POST/DELETE, a forwarded decision is GET or HEAD,
    never matches NEVER_FORWARDED (checked with an independent matcher, also on the path the
    daemon's router would see), is allowed by the rule it names, and matches DANGEROUS_READS
    only when that rule says "dangerous": true.

Run: fuzz/run.sh canonical [SECONDS]      Replay one input: python fuzz/fuzz_canonical.py FILE
"""
from __future__ import annotations

import contextlib
import sys

if __name__ == "__main__":  # only the fuzzing run needs atheris; pytest imports check() without it
    import atheris

    _instrumented = atheris.instrument_imports(include=["porthole", "fuzz_common"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import fuzz_common as common
    from fuzz_common import proxy, require

METHODS = ("GET", "HEAD", "POST", "DELETE")


def check(data: bytes) -> None:
    """Run one raw target through canonicalize_target and decide; raise on a broken invariant."""
    try:
        target = proxy.canonicalize_target(data)
    except proxy.Refusal as refusal:
        require(refusal.status == 400 and refusal.close and bool(refusal.reason),
                "canonicalisation refusal is not a closing 400", data, refusal.status, refusal.reason)
        target = None
    else:
        common.check_target(data, target)
    for profile in common.PROFILES:
        for method in METHODS:
            facts = proxy.RequestFacts(method, data, [], "unix", profile)
            try:
                decision = proxy.decide(common.POLICY, facts)
            except proxy.Refusal as refusal:
                require(refusal.status in (400, 403) and bool(refusal.reason), "odd refusal",
                        data, refusal.status, refusal.reason)
                if target is None and method in ("GET", "HEAD"):
                    require(refusal.status == 400, "a refused target was not refused with 400 by decide",
                            data, refusal.status)
                continue
            require(target is not None and decision.target == target,
                    "decide forwarded a target canonicalize_target refuses or reads differently",
                    data, target, decision.target)
            common.check_decision(facts, decision)


def main() -> None:
    atheris.Setup(common.self_command(sys.argv), check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
