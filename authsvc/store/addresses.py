"""Client addresses as session hashes store them: an IPv4 address as a whole number, which
Redis keeps in a listpack as a 4-byte integer instead of up to 15 characters of text; any
other address (IPv6) as text. A stored address is never a number otherwise, so values
stored before the change read as they are."""

from __future__ import annotations

import ipaddress

# Offset into the signed 32-bit range: listpack's 4-byte integers are signed.
_OFFSET = 1 << 31


def pack(ip: str) -> str:
    """The stored form of a client address."""
    try:
        return str(int(ipaddress.IPv4Address(ip)) - _OFFSET)
    except ValueError:
        return ip


def unpack(stored: str) -> str:
    """The address that `pack` stored."""
    try:
        number = int(stored)
    except ValueError:
        return stored
    try:
        return str(ipaddress.IPv4Address(number + _OFFSET))
    except ValueError:
        return ""
