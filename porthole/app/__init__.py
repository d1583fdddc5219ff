"""The program: the command line, the wiring of the parts, --healthcheck."""
