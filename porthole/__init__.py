"""Porthole: a read-only proxy for the Docker Engine API.

Clients (Traefik, dashboards, the docker CLI) talk to porthole instead of the Docker socket.
Porthole parses every request head with h11, decides it against rules.json and forwards only
allowed GET and HEAD requests, rebuilt in canonical form, to the daemon; it filters what comes
back (redaction, label scopes) before the client sees it.

The package, in the order to read it (imports run one way: each layer imports only the
layers above it in this list, and the core imports nothing outside itself):
  core/         THE SECURITY CORE, pure functions and no I/O: what may reach the daemon and
                what comes back. Read it first (core/__init__.py gives the order).
  runtime/      settings, the selectors loop and its timers and signals, TLS, the log, the
                metrics registry.
  connections/  the client and daemon sides as small state machines, and the sources that
                carry an answer from one to the other.
  ops/          learn mode, the Tecnativa drop-in, rules reload, the metrics listener, --doctor.
  app/          the command line, the wiring of it all (Proxy, Dispatch), --healthcheck.
proxy.py, beside the package, is the entry point that `python3 proxy.py` runs and PyInstaller
freezes. tests/unit/test_layers.py enforces the import order.
"""
from __future__ import annotations


VERSION = "0.1.0"
