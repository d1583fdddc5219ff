"""The security core: what may reach the daemon, and what comes back.

Changes here need a second reviewer. Nothing here does I/O: no socket, selectors, ssl,
threading or subprocess, and nothing from outside porthole.core (tests/unit/test_layers.py
enforces both), so every part can be tested as a pure function. Read in this order; each module
opens with the invariants it enforces.

  target.py   canonicalize_target: the one reading of a request target (what is matched is
              exactly what is forwarded).
  guards.py   path templates; NEVER_FORWARDED (no rules file can allow them); DANGEROUS_READS
              (only a rule that says "dangerous": true); REDACTED_READS (dangerous unless the
              profile redacts what makes them so: GET /swarm's join tokens).
  clients.py  which profile each client connection gets (rules.json's "clients").
  policy.py   rules.json, strictly validated into a Policy: GET and HEAD rules only.
  decide.py   decide: a request's facts in, a Decision or a Refusal out; forwarded_request:
              the one place a request for the daemon is built (GET or HEAD, asserted).
  wire.py     the bytes on either side: request heads parsed by h11, the request porthole
              writes to the daemon, the response heads and body framing it writes to clients,
              the daemon's bodies it frames.
  redact.py   values inside text the daemon recorded: build steps (CreatedBy), command lines.
  objects.py  what one object of an answer keeps: JSON shapes, labels, per-object redaction.
  filters.py  what a profile may see of an answer: redaction and label scopes (fail closed).
  rewrite.py  a filter applied to an answer's bytes, buffered and bounded (fail closed).
"""
