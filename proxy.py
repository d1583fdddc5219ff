#!/usr/bin/env python3
"""Porthole: a read-only proxy for the Docker Engine API.

The entry point: `python3 proxy.py ...` runs it from a checkout, and PyInstaller freezes it. The
code is the porthole/ package beside it; read porthole/__init__.py first, then porthole/core/.
"""
import sys

from porthole.app.command_line import main

if __name__ == "__main__":
    sys.exit(main())
