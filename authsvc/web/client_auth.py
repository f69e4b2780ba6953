"""Service-client authentication: HTTP Basic `NAME:SECRET`, each part form-urlencoded before
Base64 (RFC 6749 2.3.1, `client_secret_basic`), throttled per client name and address."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from aiohttp import web

from authsvc.domain.clients import ServiceClient
from authsvc.domain.errors import InsufficientScope, InvalidClient
from authsvc.web.client_ip import request_ip
from authsvc.web.context import CLIENTS, THROTTLE

MAX_CREDENTIALS = 1024  # characters of the Basic credentials; longer is not a client of ours


async def require_client(request: web.Request, scope: str) -> ServiceClient:
    """The authenticated client, which must hold `scope`; InvalidClient (401),
    InsufficientScope (403) or RateLimited (429) otherwise."""
    name, secret = _credentials(request)
    if not name:  # no credentials to check: nothing to throttle either
        raise InvalidClient("HTTP Basic client credentials required")
    throttle, ip = request.app[THROTTLE], request_ip(request)
    await throttle.check_client_address(ip)
    client = request.app[CLIENTS].authenticate(name, secret)
    if client is None:
        await throttle.count_client_failure(name, ip)
        raise InvalidClient()
    if scope not in client.scopes:
        raise InsufficientScope(f"this needs the {scope!r} scope")
    return client


def _credentials(request: web.Request) -> tuple[str, str]:
    """(name, secret) from the one Authorization header, or ("", "") when there are none."""
    headers = request.headers.getall("Authorization", ())
    if len(headers) != 1:
        return "", ""
    scheme, _, encoded = headers[0].partition(" ")
    if scheme.lower() != "basic" or len(encoded) > MAX_CREDENTIALS:
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # ValueError: non-ASCII in the Base64 text
        return "", ""
    name, colon, secret = decoded.partition(":")
    if not colon:
        return "", ""
    return unquote_plus(name), unquote_plus(secret)
