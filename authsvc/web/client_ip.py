"""The client's address, believing X-Forwarded-For only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from authsvc.web.context import SETTINGS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def request_ip(request: web.Request) -> str:
    """The address of the client behind `request` (see client_ip)."""
    return client_ip(
        request.remote,
        request.headers.getall("X-Forwarded-For", ()),
        request.app[SETTINGS].trusted_proxies,
    )


def client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """The rightmost address that is not a trusted proxy.

    `forwarded_for` holds every X-Forwarded-For line, in order; together they are one list
    (RFC 9110 5.3), each proxy appending the address it received the request from. Only the
    entries that trusted proxies wrote can be believed, so the walk starts at the peer and
    goes left while the hop is trusted; however many entries a client writes itself, they
    are left of the first untrusted one and never read. Without trusted proxies the peer
    address is the client."""
    address = peer or ""
    if not trusted or not forwarded_for or not _trusted(address, trusted):
        return address
    hops = ",".join(forwarded_for).split(",")
    for entry in reversed(hops):
        hop = _address(entry.strip())
        if hop is None:
            return address  # a trusted proxy wrote something else: its own view is all we have
        address = hop
        if not _trusted(hop, trusted):
            break
    return address


def _address(hop: str) -> str | None:
    """An address as proxies write it: bare, or with a port (`192.0.2.1:443`,
    `[2001:db8::1]:443`, as some load balancers do)."""
    host, colon, port = hop.rpartition(":")
    if colon and port.isdigit() and (host.startswith("[") or "." in host):
        hop = host
    hop = hop.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(hop)
    except ValueError:
        return None
    return hop


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)
