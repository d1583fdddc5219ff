"""Write the hand-made seed inputs into fuzz/corpus/<target>/seed-<name>.

    python3 fuzz/seeds.py          (re)writes the seeds; other corpus files are left alone

Seeds are requests the docker CLI and SDK really send, plus the tricks a hostile client tries.
Inputs the fuzzer found and that were merged in (fuzz/run.sh --merge) sit beside them under
their content hash.
"""
from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"

CLI = b"Host: api.moby.localhost\r\nUser-Agent: Docker-Client/24.0.7 (linux)\r\n"
TCP = b"Host: 127.0.0.1:2375\r\nUser-Agent: Docker-Client/24.0.7 (linux)\r\n"
SDK = b"Host: localhost\r\nUser-Agent: docker-sdk-python/7.2.0\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: keep-alive\r\n"


def req(method: str, target: bytes, headers: bytes = CLI, body: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return method.encode() + b" " + target + b" " + version + b"\r\n" + headers + b"\r\n" + body


FILTERS = b"filters=%7B%22status%22%3A%7B%22running%22%3Atrue%7D%7D"

# Raw request targets (fuzz_canonical).
CANONICAL = {
    "ping": b"/_ping",
    "version": b"/v1.43/version",
    "ps": b"/v1.43/containers/json",
    "ps-all-filters": b"/v1.43/containers/json?all=1&" + FILTERS,
    "inspect": b"/v1.43/containers/web/json",
    "image-inspect-registry": b"/v1.43/images/registry.local:5000/team/app:1.2/json",
    "image-digest": b"/v1.43/images/sha256:4f1c6e2a9b3d/json",
    "events-filters": b"/v1.43/events?since=1700000000&filters=%7B%22type%22%3A%5B%22container%22%5D%7D",
    "logs-follow": b"/v1.43/containers/web/logs?follow=1&stderr=1&stdout=1&tail=all",
    "stats": b"/v1.43/containers/web/stats?stream=0",
    "history": b"/v1.43/images/busybox:latest/history",
    "system-df": b"/v1.43/system/df",
    "network-ls": b"/v1.43/networks?filters=%7B%7D",
    "space-plus": b"/v1.43/containers/json?label=a+b",
    "encoded-export": b"/v1.41/containers/web/%65xport",
    "encoded-containers": b"/%63ontainers/json",
    "encoded-slash": b"/v1.41/containers/a%2Fb/json",
    "encoded-slash-lower": b"/containers/..%2f..%2fdebug/pprof",
    "encoded-backslash": b"/containers/a%5Cb/json",
    "double-slash": b"//containers/json",
    "inner-double-slash": b"/containers//json",
    "trailing-slash": b"/containers/json/",
    "dot-segment": b"/containers/./json",
    "dotdot": b"/images/../debug/pprof",
    "encoded-dotdot": b"/%2e%2e/debug/vars",
    "version-leading-zero": b"/v1.041/info",
    "version-three-part": b"/v1.41.0/info",
    "version-upper": b"/V1.41/info",
    "version-dot": b"/v./debug/pprof",
    "version-only": b"/v1.41",
    "debug": b"/debug/pprof/goroutine?debug=2",
    "attach-ws": b"/v1.41/containers/web/attach/ws?stream=1",
    "session": b"/session",
    "swarm": b"/swarm",
    "exec-inspect": b"/exec/abc123/json",
    "images-get": b"/images/get?names=busybox",
    "image-name-get": b"/images/library/busybox/get",
    "archive": b"/containers/web/archive?path=/etc/shadow",
    "logs-extra-query": b"/containers/web/logs?follow=1&details=1",
    "repeated-query": b"/containers/json?all=1&all=0",
    "semicolon": b"/containers/json;x=1",
    "fragment": b"/containers/json#x",
    "absolute-form": b"http://docker/containers/json",
    "asterisk": b"*",
    "nul": b"/containers/%00/json",
    "overlong-utf8": b"/containers/%C0%AF/json",
    "query-utf8": b"/containers/json?filters=%E2%9C%93",
    "query-bad-utf8": b"/containers/json?filters=%FF",
    "percent-bad": b"/containers/%zz/json",
    "hyphen-first": b"/containers/-rf/json",
}

# Whole client byte streams (fuzz_request).
REQUEST = {
    "cli-head-ping": req("HEAD", b"/_ping"),
    "cli-version": req("GET", b"/_ping") + req("GET", b"/v1.43/version"),
    "cli-ps": req("GET", b"/v1.43/containers/json"),
    "tcp-ps-all": req("GET", b"/v1.43/containers/json?all=1&" + FILTERS, TCP),
    "sdk-inspect": req("GET", b"/v1.43/containers/web/json", SDK),
    "cli-images": req("GET", b"/v1.43/images/json"),
    "cli-image-inspect": req("GET", b"/v1.43/images/registry.local:5000/team/app:1.2/json"),
    "cli-events": req("GET", b"/v1.43/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D"),
    "cli-logs-follow": req("GET", b"/v1.43/containers/web/logs?follow=1&stderr=1&stdout=1&tail=all"),
    "cli-info-networks-volumes": req("GET", b"/v1.43/info") + req("GET", b"/v1.43/networks") + req("GET", b"/v1.43/volumes"),
    "pipelined-mixed": req("GET", b"/_ping") + req("GET", b"/v1.41/containers/web/export") + req("HEAD", b"/_ping"),
    "cli-run": req("POST", b"/v1.43/containers/create?name=x",
                   CLI + b"Content-Type: application/json\r\nContent-Length: 17\r\n", b'{"Image":"alpine"}'),
    "cli-rm": req("DELETE", b"/v1.43/containers/web?force=1"),
    "cli-exec": req("POST", b"/v1.43/containers/web/exec", CLI + b"Content-Length: 2\r\n", b"{}"),
    "attach-upgrade": req("POST", b"/v1.43/containers/web/attach?stream=1&stdout=1",
                          CLI + b"Connection: Upgrade\r\nUpgrade: tcp\r\n"),
    "get-upgrade-websocket": req("GET", b"/containers/web/attach/ws",
                                 CLI + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n"),
    "h2c-upgrade": req("GET", b"/_ping", CLI + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
    "encoded-export": req("GET", b"/v1.41/containers/web/%65xport"),
    "encoded-slash": req("GET", b"/v1.41/containers/a%2Fb/json"),
    "double-slash": req("GET", b"//containers/json"),
    "version-leading-zero": req("GET", b"/v1.041/info"),
    "dotdot-debug": req("GET", b"/v1.41/containers/../debug/pprof"),
    "cl-and-te": req("GET", b"/_ping", CLI + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                     b"0\r\n\r\n") + req("POST", b"/containers/create"),
    "chunked-get": req("GET", b"/_ping", CLI + b"Transfer-Encoding: chunked\r\n",
                       b"5\r\nhello\r\n0\r\n\r\n") + req("GET", b"/_ping"),
    "get-with-body": req("GET", b"/containers/json", CLI + b"Content-Length: 5\r\n", b"HELLO") + req("GET", b"/_ping"),
    "content-length-zero": req("GET", b"/containers/json", CLI + b"Content-Length: 0\r\n") + req("GET", b"/_ping"),
    "duplicate-host": req("GET", b"/_ping", b"Host: localhost\r\nHost: evil.example\r\n"),
    "dns-rebinding-host": req("GET", b"/containers/json", b"Host: attacker.example.com:2375\r\n") + req("GET", b"/_ping", TCP),
    "browser-origin": req("GET", b"/containers/json", TCP + b"Origin: http://attacker.example\r\n") + req("GET", b"/_ping", TCP),
    "absolute-form": req("GET", b"http://docker/containers/json"),
    "asterisk-options": req("OPTIONS", b"*"),
    "http10": req("GET", b"/_ping", b"", version=b"HTTP/1.0") + req("GET", b"/_ping"),
    "http10-keepalive": req("GET", b"/_ping", b"Connection: keep-alive\r\n", version=b"HTTP/1.0") + req("GET", b"/info"),
    "connection-close": req("GET", b"/_ping", CLI + b"Connection: close\r\n") + req("GET", b"/_ping"),
    "bare-lf": b"GET /_ping HTTP/1.1\nHost: localhost\n\nGET /info HTTP/1.1\nHost: localhost\n\n",
    "obs-fold": req("GET", b"/_ping", b"Host: localhost\r\nX-Folded: a\r\n b\r\n"),
    "header-nul": req("GET", b"/_ping", b"Host: localhost\r\nX-Nul: a\x00b\r\n"),
    "smuggle-after-404": req("GET", b"/nope") + req("GET", b"/_ping"),
    "forwarded-headers-stripped": req("GET", b"/_ping", CLI + b"Accept: application/json\r\nX-Registry-Auth: e30=\r\n"
                                      b"Cookie: a=b\r\nX-Forwarded-For: 1.2.3.4\r\n"),
    "binary-junk": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "partial-head": b"GET /v1.41/containers/json HTTP/1.1\r\nHost: local",
    "big-header": req("GET", b"/_ping", CLI + b"X-Big: " + b"a" * 2100 + b"\r\n") + req("GET", b"/_ping"),
    "swarm-and-exec": req("GET", b"/swarm") + req("GET", b"/exec/abc/json") + req("GET", b"/_ping"),
    # 300 pipelined refusals in one write: each answered locally; must not recurse per request
    # (proxy.py of commit a942aa3 hit RecursionError from about 200 of them).
    "pipelined-300-denied": b"GET /x HTTP/1.1\r\nHost:a\r\n\r\n" * 300,
    "http-version-3.1": req("GET", b"/_ping", version=b"HTTP/3.1"),
    # found by fuzz_request (minimised): a control byte in User-Agent was forwarded to the daemon
    "ctl-in-user-agent": b"GET /volumes HTTP/1.1\r\nHost:.m.localhost\x1d\nUser-Agent:lhst\x1d\n\r\n\x00",
}


def main() -> None:
    for target, seeds in (("canonical", CANONICAL), ("request", REQUEST)):
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (directory / f"seed-{name}").write_bytes(data)
        print(f"{directory}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
