"""Certificates the TLS tests make for themselves with the `openssl` CLI (Debian's openssl):
a CA, a server certificate for 127.0.0.1/localhost, client certificates (CN=dozzle, CN=other),
a client certificate that expired in 2020, and a second, unrelated CA with a client certificate
of its own (CN=dozzle too: only the signature differs). EC P-256 keys, made in well under a
second. Every file is world-readable: the proxy runs as uid 65532 (test keys only).

make_pki(directory) -> Pki is what conftest's `pki` fixture (one per test module) returns;
client_context(pki, name=None, ca=None) is a client's ssl context trusting the CA (or `ca`),
with the client certificate `name` if given."""

from __future__ import annotations

import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
CA_CONFIG = """[ca]
default_ca = test
[test]
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = any
x509_extensions = client
[any]
commonName = supplied
[client]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
"""


def openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), r.stderr))


@dataclass
class Pair:
    cert: Path
    key: Path


@dataclass
class Pki:
    dir: Path
    ca: Path
    other_ca: Path
    server: Pair
    clients: dict  # name -> Pair: "dozzle", "other", "expired", "wrong-ca"

    def listen_url(self, port: int, mutual: bool = True, **query: str) -> str:
        options = {"tlscert": str(self.server.cert), "tlskey": str(self.server.key)}
        if mutual:
            options["tlscacert"] = str(self.ca)
        options.update(query)
        return "tcp://127.0.0.1:%d?%s" % (port, "&".join("%s=%s" % kv for kv in options.items()))


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / (name + ".pem"), directory / (name + "-key.pem")
    openssl("req", "-x509", "-new", *EC, "-keyout", key.name, "-out", cert.name, "-days", "3",
            "-subj", "/CN=%s" % name, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return cert, key


def make_leaf(directory: Path, name: str, cn: str, ca: tuple[Path, Path], usage: str,
              serial: int, san: str | None = None) -> Pair:
    cert, key, csr = directory / (name + ".pem"), directory / (name + "-key.pem"), directory / (name + ".csr")
    openssl("req", "-new", *EC, "-keyout", key.name, "-out", csr.name, "-subj", "/CN=%s" % cn, cwd=directory)
    extensions = directory / (name + ".ext")
    extensions.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=%s\n%s" % (
        usage, "subjectAltName=%s\n" % san if san else ""))
    openssl("x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name, "-set_serial",
            str(serial), "-days", "3", "-extfile", extensions.name, "-out", cert.name, cwd=directory)
    return Pair(cert, key)


def make_expired(directory: Path, name: str, cn: str, ca: tuple[Path, Path]) -> Pair:
    """Valid for one day in January 2020 (`openssl ca` can set both dates)."""
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("1000\n")
    config = directory / "ca.cnf"
    config.write_text(CA_CONFIG.format(dir=directory))
    cert, key, csr = directory / (name + ".pem"), directory / (name + "-key.pem"), directory / (name + ".csr")
    openssl("req", "-new", *EC, "-keyout", key.name, "-out", csr.name, "-subj", "/CN=%s" % cn, cwd=directory)
    openssl("ca", "-batch", "-config", config.name, "-cert", ca[0].name, "-keyfile", ca[1].name,
            "-in", csr.name, "-out", cert.name, "-notext", "-startdate", "20200101000000Z",
            "-enddate", "20200102000000Z", cwd=directory)
    return Pair(cert, key)


def make_pki(directory: Path) -> Pki:
    directory = Path(directory)
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    server = make_leaf(directory, "server", "localhost", ca, "serverAuth", 1,
                       san="IP:127.0.0.1,DNS:localhost")
    clients = {
        "dozzle": make_leaf(directory, "dozzle", "dozzle", ca, "clientAuth", 2),
        "other": make_leaf(directory, "other", "other", ca, "clientAuth", 3),
        "wrong-ca": make_leaf(directory, "wrong-ca", "dozzle", other_ca, "clientAuth", 4),
        "expired": make_expired(directory, "expired", "dozzle", ca),
    }
    for path in directory.iterdir():
        os.chmod(path, 0o644)
    return Pki(directory, ca[0], other_ca[0], server, clients)


def client_context(pki: Pki, name: str | None = None, ca: Path | None = None) -> ssl.SSLContext:
    """A client's context: trusts pki.ca (or `ca`), presents pki.clients[name] if `name` is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca or pki.ca))
    if name is not None:
        pair = pki.clients[name]
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context
