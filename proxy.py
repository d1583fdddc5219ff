#!/usr/bin/env python3
"""Porthole: a read-only proxy for the Docker Engine API.

The entry point: `python3 proxy.py ...` runs it from a checkout, and PyInstaller freezes it. The
code is the porthole/ package beside it; read porthole/__init__.py first, then porthole/core/.
--healthcheck, which the image runs every 30 s, has an entry of its own that loads only what the
probe needs (porthole/app/healthcheck.py), not the whole program.
"""
import sys

if __name__ == "__main__":
    if "--healthcheck" in sys.argv[1:]:
        from porthole.app.healthcheck import main
    else:
        from porthole.app.command_line import main
    sys.exit(main())
