#!/usr/bin/env python3
"""Porthole's CPU cost per request in instructions (valgrind's callgrind), which unlike wall
or CPU time is repeatable on a shared, noisy machine.

    .venv/bin/python bench/instructions.py [--requests 300,900] [--proxy proxy.py]

A proxy.py runs where it is, with the porthole/ package beside it (older ones are one file).

For each workload, the proxy runs under callgrind twice, serving N1 and then N2 keep-alive
requests from one client, in front of the test suite's fake daemon (tests/lib/fake_upstream.py);
(I(N2) - I(N1)) / (N2 - N1) is the cost of one request, start-up and shutdown cancelled out.
Workloads: GET /_ping, and GET /containers/json?all=1 answered with 17 KB chunked in 4 KiB
chunks (as dockerd sends it); `inspect` and `inspect-unfiltered` (not run unless named in
--workloads): GET /containers/{id}/json of 20 containers in turn, answered with bench/filtering.py's
6 KB inspect, through the shipped rules' default profile (env and the other default redactions)
and through the same profile with `"redact": []`. Needs valgrind; run it as any user.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lib"))

import fake_upstream as fu  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from filtering import BODY as INSPECT_BODY  # noqa: E402

LIST_BODY = (b'[' + b','.join(b'{"Id":"%064d","Names":["/bench-%02d"],"Image":"busybox","State":"exited",'
                               b'"Labels":{"a":"b"},"Pad":"%s"}' % (i, i, b"x" * 700) for i in range(20))
             + b']\n')


def chunked_list(conn, req):
    head = fu.response(200, b"", content_length=False, headers=[("Transfer-Encoding", "chunked")])
    body = b"".join(fu.chunk(LIST_BODY[i:i + 4096]) for i in range(0, len(LIST_BODY), 4096))
    return conn.send(head + body + fu.LAST_CHUNK)


def inspect(conn, req):
    return conn.send(fu.response(200, INSPECT_BODY, headers=[("Api-Version", "1.47"),
                                                             ("Content-Type", "application/json")]))


WORKLOADS = {"ping": "/v1.41/_ping", "list": "/v1.41/containers/json?all=1",
             "inspect": "/v1.41/containers/bench-{turn:02d}/json", "inspect-unfiltered": "/v1.41/containers/bench-{turn:02d}/json"}


def instructions(proxy: Path, upstream: fu.FakeUpstream, target: str, requests: int, extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="phi-") as work:
        listen = f"{work}/p.sock"
        out = f"{work}/callgrind.out"
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(proxy),
               "--listen", f"unix://{listen}", "--upstream", upstream.url, "--allow-root", *extra]
        errors = open(f"{work}/stderr", "wb")
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            deadline = time.monotonic() + 600  # python under valgrind starts slowly on a busy machine
            while True:  # the socket file appears before it listens
                try:
                    client = fu.HttpClient(listen, timeout=60)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        tail = Path(f"{work}/stderr").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"the proxy did not start under valgrind:\n{tail}") from None
                    time.sleep(0.2)
            with client:
                for turn in range(requests):
                    client.request("GET", target.format(turn=turn % 20))
                    response = client.read_response("GET")
                    assert response.status == 200, response.status
        finally:
            proc.terminate()
            proc.wait(300)
            errors.close()
        text = Path(out).read_text(errors="replace")
        return int(re.search(r"^totals: (\d+)", text, re.M).group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default="300,900", help="N1,N2 (default 300,900)")
    ap.add_argument("--proxy", default=str(REPO / "proxy.py"))
    ap.add_argument("--workloads", default="ping,list")
    ap.add_argument("--proxy-args", default="", help="extra porthole arguments, space-separated")
    args = ap.parse_args()
    n1, n2 = (int(n) for n in args.requests.split(","))
    upstream = fu.FakeUpstream().start()
    upstream.route("/containers/json", chunked_list)
    for turn in range(20):
        upstream.route(f"/containers/bench-{turn:02d}/json", inspect)
    work = tempfile.TemporaryDirectory(prefix="phi-rules-")
    rules = json.loads((REPO / "rules.json").read_text())
    rules["profiles"]["default"]["redact"] = []
    unfiltered = Path(work.name) / "rules.json"
    unfiltered.write_text(json.dumps(rules))
    try:
        for name in args.workloads.split(","):
            extra = args.proxy_args.split() + (["--rules", str(unfiltered)] if name == "inspect-unfiltered" else [])
            low = instructions(Path(args.proxy), upstream, WORKLOADS[name], n1, extra)
            high = instructions(Path(args.proxy), upstream, WORKLOADS[name], n2, extra)
            print(f"{name}: {(high - low) / (n2 - n1):,.0f} instructions per request "
                  f"({n1}: {low:,}, {n2}: {high:,})", flush=True)
    finally:
        upstream.stop()
        work.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
