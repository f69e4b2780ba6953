"""An aiohttp middleware that admits requests with a valid access token of a live session.

app = web.Application(middlewares=[middleware(verifier, public={"/healthz"})])
...  request["principal"]  # an authsvc.resource.Principal
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from authsvc.resource._http import bearer_token, error
from authsvc.resource.verifier import InvalidToken, Unavailable, Verifier


def middleware(verifier: Verifier, *, public: Collection[str] = ()) -> Middleware:
    """Answer 401 (and 503 when it cannot be known) for every path but `public` unless the
    request carries a valid token; put its principal at `request["principal"]`."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in public:
            return await handler(request)
        try:
            token = bearer_token(request.headers.getall("Authorization", ()))
            request["principal"] = await verifier.verify(token)
        except (ValueError, InvalidToken) as exc:
            return _response(*error(401, "invalid_token", str(exc)))
        except Unavailable as exc:
            return _response(*error(503, "unavailable", str(exc)))
        return await handler(request)

    return authenticate


def _response(status: int, headers: dict[str, str], body: bytes) -> web.Response:
    return web.Response(status=status, headers=headers, body=body)
