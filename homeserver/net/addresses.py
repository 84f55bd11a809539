"""Which IP addresses a request to a URL someone else chose may reach (SSRF).

Only ordinary Internet addresses, unless the operator allows an address or a range. Every
special range is named, so that a refusal says why, and the IPv6 forms that carry an IPv4
address (6to4) are judged by the address they carry.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), name) for cidr, name in pairs)


# IANA's special-purpose registries (RFC 6890 and later), plus multicast and the class E
# block; the first match names the refusal, so narrower ranges come first. Ranges that the
# registry calls globally reachable but that lead to relays or translators (NAT64, Teredo)
# are refused too: through them a request reaches addresses that were never checked.
_SPECIAL_V4 = _nets(
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "AS112"),
    ("192.52.193.0/24", "AMT"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "AS112"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # with 255.255.255.255, the broadcast address
)
_SPECIAL_V6 = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "NAT64 (local use)"),
    ("::/8", "reserved"),  # also the deprecated IPv4-compatible ::a.b.c.d
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "SRv6 SIDs"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not an ordinary Internet address (e.g. "loopback"); None when it is."""
    special = _SPECIAL_V4 if isinstance(ip, ipaddress.IPv4Address) else _SPECIAL_V6
    for net, name in special:
        if ip in net:
            return name
    if isinstance(ip, ipaddress.IPv6Address) and ip in _SIX_TO_FOUR:
        assert ip.sixtofour is not None
        inner = refusal(ip.sixtofour)
        return None if inner is None else f"6to4 of {inner}"
    # What Python's own tables know beyond ours (its list grows with the registry).
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_link_local:
        return "reserved"
    return None


def is_public(ip: IPAddress) -> bool:
    return refusal(ip) is None


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (or single addresses) as networks; a ValueError names the bad one."""
    out = []
    for cidr in cidrs:
        try:
            out.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"not an IP address or CIDR range: {cidr!r}") from e
    return tuple(out)


class AddressPolicy:
    """Public addresses, and those inside the operator's allowed ranges."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._allow = parse_networks(allow)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why a request may not reach ``ip``; None when it may."""
        if any(ip.version == net.version and ip in net for net in self._allow):
            return None
        return refusal(ip)

    def allows(self, ip: IPAddress) -> bool:
        return self.refusal(ip) is None
