"""Per-client profiles: which profile each client connection gets (rules.json's "clients").

"clients": [{"match": {"uid": 1000}, "profile": "traefik"}, ...]. An entry's match holds one or
more conditions and all of them must hold. uid and gid are a unix socket peer's (SO_PEERCRED:
its effective uid and gid when it connected); address, cert_cn and certificate belong to TCP
peers (the peer address; the common name of the client certificate a mutual-TLS listener
verified; whether it verified one at all); ssh_user to a --stdio session under sshd (the user
the SSH key logged in as).

Invariants:
  1. The first entry that matches picks the profile; a client no entry matches gets its
     listener's profile.
  2. uid and gid combine with each other, address, cert_cn and certificate with each other,
     ssh_user with nothing: never one kind with another (they never hold for the same client).
  3. "certificate": false never matches a client with a verified certificate (not even one
     without a single CN), and cert_cn or "certificate": true never one without.
  4. An entry that can never be the first match (earlier entries match all it matches) is
     refused at load: a mapping that reads as granting something always does.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence


UNIX_CONDITIONS = ("uid", "gid")
TCP_CONDITIONS = ("address", "cert_cn", "certificate")
SSH_CONDITIONS = ("ssh_user",)
_CONDITION_NAMES = "uid, gid, address, cert_cn, certificate, ssh_user"
_USER_NAME = re.compile(r"[A-Za-z0-9._@$-]{1,256}")  # what useradd and the directories' names accept, and more
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel: never a real id
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ClientFacts:
    """Who is at the other end of one connection: what `clients` entries are matched against."""

    uid: int | None = None
    gid: int | None = None
    address: IPAddress | None = None
    cert_cn: str | None = None  # None: no verified certificate; "": one without a single CN
    ssh_user: str | None = None


def peer_address(host: str) -> IPAddress | None:
    """The TCP peer as an address (IPv4-mapped IPv6 as IPv4, any %scope dropped)."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


@dataclass(frozen=True)
class ClientRule:
    index: int
    profile: str
    uid: int | None = None
    gid: int | None = None
    network: IPNetwork | None = None
    cert_cn: str | None = None
    certificate: bool | None = None  # a verified client certificate, or none (None: either)
    ssh_user: str | None = None

    @property
    def label(self) -> str:
        return f"clients[{self.index}]"

    @property
    def certified(self) -> bool | None:
        """Whether a client it matches has a verified certificate (None: either): a cert_cn implies one."""
        return True if self.cert_cn is not None else self.certificate

    def matches(self, facts: ClientFacts) -> bool:
        return ((self.uid is None or self.uid == facts.uid)
                and (self.gid is None or self.gid == facts.gid)
                and (self.network is None or (facts.address is not None and facts.address in self.network))
                and (self.cert_cn is None or self.cert_cn == facts.cert_cn)
                and (self.certificate is None or (facts.address is not None
                                                  and self.certificate == (facts.cert_cn is not None)))
                and (self.ssh_user is None or self.ssh_user == facts.ssh_user))

    def covers(self, later: ClientRule) -> bool:
        """Every client `later` matches is matched by this entry too."""
        if any(mine is not None and mine != theirs for mine, theirs in
               ((self.uid, later.uid), (self.gid, later.gid), (self.cert_cn, later.cert_cn),
                (self.certified, later.certified), (self.ssh_user, later.ssh_user))):
            return False
        return self.network is None or (later.network is not None and later.network.version == self.network.version
                                        and later.network.subnet_of(self.network))  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = [f"uid={self.uid}" if self.uid is not None else "", f"gid={self.gid}" if self.gid is not None else "",
                 f"address={self.network}" if self.network is not None else "",
                 f"cert_cn={self.cert_cn!r}" if self.cert_cn is not None else "",
                 f"certificate={str(self.certificate).lower()}" if self.certificate is not None else "",
                 f"ssh_user={self.ssh_user!r}" if self.ssh_user is not None else ""]
        return " ".join(part for part in parts if part)


def choose_profile(clients: Sequence[ClientRule], facts: ClientFacts,
                   listener_profile: str) -> tuple[str, ClientRule | None]:
    """The profile for a connection: the first matching entry's, else the listener's."""
    for rule in clients:
        if rule.matches(facts):
            return rule.profile, rule
    return listener_profile, None


def shadowing_entries(earlier: Sequence[ClientRule], later: ClientRule) -> list[ClientRule]:
    """The earlier entries that together match every client `later` matches (so it can never
    be the first match), or [] when some client would reach it. One broader entry is enough;
    address entries whose other conditions `later` implies can also cover it together, and so
    can entries for TCP clients with a certificate and entries for those without."""
    for rule in earlier:
        if rule.covers(later):
            return [rule]
    if later.network is None and later.certified is None:
        return []  # a unix-peer entry: address entries never match unix peers
    if later.certified is None:  # its TCP clients with a certificate, and those without
        with_one = shadowing_entries(earlier, replace(later, certificate=True))
        without = shadowing_entries(earlier, replace(later, certificate=False)) if with_one else []
        return sorted(set(with_one + without), key=lambda rule: rule.index) if without else []
    remaining: list[IPNetwork] = ([later.network] if later.network is not None
                                  else [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")])
    used = []
    for rule in earlier:
        if rule.network is None or not replace(rule, network=None).covers(later):
            continue
        left: list[IPNetwork] = []
        for net in remaining:
            if net.version != rule.network.version or not net.overlaps(rule.network):
                left.append(net)
            elif not net.subnet_of(rule.network):  # type: ignore[arg-type]
                left.extend(net.address_exclude(rule.network))  # type: ignore[arg-type]
        if left != remaining:
            used.append(rule)
        remaining = left
        if not remaining:
            return used
    return []


def load_client_rules(raw: Any, profiles: Iterable[str], fail: Any) -> tuple[ClientRule, ...]:
    """Validate the `clients` list (see the module's docstring). Raises PolicyError naming the JSON path."""
    if not isinstance(raw, list):
        raise fail("$.clients", "must be a list of {\"match\": {...}, \"profile\": NAME}")
    known = set(profiles)
    rules: list[ClientRule] = []
    for index, entry in enumerate(raw):
        where = f"$.clients[{index}]"
        if not isinstance(entry, dict):
            raise fail(where, "must be an object")
        unknown = sorted(entry.keys() - {"match", "profile", "comment"})
        if unknown:
            raise fail(where, f"unknown key {unknown[0]!r}")
        for key in ("match", "profile"):
            if key not in entry:
                raise fail(where, f"missing key {key!r}")
        if not isinstance(entry.get("comment", ""), str):
            raise fail(where + ".comment", "must be a string")
        profile = entry["profile"]
        if not isinstance(profile, str):
            raise fail(where + ".profile", "must be the name of a profile")
        if profile not in known:
            raise fail(where + ".profile", f"no profile named {profile!r}")
        match = entry["match"]
        if not isinstance(match, dict):
            raise fail(where + ".match", "must be an object")
        unknown = sorted(match.keys() - {*UNIX_CONDITIONS, *TCP_CONDITIONS, *SSH_CONDITIONS})
        if unknown:
            raise fail(where + ".match", f"unknown key {unknown[0]!r} (use {_CONDITION_NAMES})")
        if not match:
            raise fail(where + ".match", f"needs at least one of {_CONDITION_NAMES}")
        if match.keys() & set(UNIX_CONDITIONS) and match.keys() & set(TCP_CONDITIONS):
            raise fail(where + ".match", "uid/gid (unix socket peers) and address/cert_cn/certificate (TCP peers) "
                                         "never hold for the same client: use two entries")
        if match.keys() & set(SSH_CONDITIONS) and len(match) > 1:
            raise fail(where + ".match", "ssh_user (--stdio sessions under sshd) never holds with uid, gid, "
                                         "address, cert_cn or certificate: use two entries")
        for key in UNIX_CONDITIONS:
            value = match.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_ID:
                raise fail(f"{where}.match.{key}", f"must be a number from 0 to {_MAX_ID}")
        network = None
        if "address" in match:
            if not isinstance(match["address"], str):
                raise fail(where + ".match.address", "must be an IPv4 or IPv6 address or CIDR network")
            try:
                network = ipaddress.ip_network(match["address"], strict=True)
            except ValueError as exc:
                raise fail(where + ".match.address", f"not an IPv4 or IPv6 address or CIDR network: {exc}") from None
            if network.version == 6 and network.network_address.ipv4_mapped is not None:
                raise fail(where + ".match.address", "write IPv4-mapped addresses as IPv4")
        cert_cn = match.get("cert_cn")
        if cert_cn is not None and (not isinstance(cert_cn, str) or not cert_cn):
            raise fail(where + ".match.cert_cn", "must be a non-empty string")
        certificate = match.get("certificate")
        if not isinstance(certificate, bool | None):
            raise fail(where + ".match.certificate", "must be true or false")
        if cert_cn is not None and certificate is False:
            raise fail(where + ".match", "a cert_cn needs a certificate: it never holds with \"certificate\": false")
        ssh_user = match.get("ssh_user")
        if ssh_user is not None and (not isinstance(ssh_user, str) or not _USER_NAME.fullmatch(ssh_user)):
            raise fail(where + ".match.ssh_user", "must be a user name (letters, digits, . _ - @ $)")
        rule = ClientRule(index, profile, match.get("uid"), match.get("gid"), network, cert_cn, certificate, ssh_user)
        shadows = shadowing_entries(rules, rule)
        if shadows:
            names = " and ".join(f"$.{earlier.label}" for earlier in shadows)
            raise fail(where, f"can never match: every client it matches is matched first by {names}")
        rules.append(rule)
    return tuple(rules)
