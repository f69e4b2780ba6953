"""The client's address, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """Walk X-Forwarded-For from the right while hops are trusted; the first untrusted
    address is the client. Without trusted proxies the peer address is the client."""
    address = peer or ""
    if not trusted or not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")][:32]):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return address
        address = hop
        if not _trusted(hop, trusted):
            break
    return address


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
