"""An ASGI middleware (Starlette, FastAPI) that admits requests with a valid access token of
a live session.

    app.add_middleware(AuthMiddleware, verifier=verifier, public={"/healthz"})
    ...  request.state.principal  # an authsvc.resource.Principal
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from authsvc.resource._http import bearer_token, error
from authsvc.resource.verifier import InvalidToken, Unavailable, Verifier

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class AuthMiddleware:
    """Answer 401 (and 503 when it cannot be known) for every HTTP path but `public` unless
    the request carries a valid token; put its principal at `scope["state"]["principal"]`,
    which Starlette shows as `request.state.principal`. A WebSocket without a valid token is
    closed before it is accepted (code 1008, policy violation)."""

    def __init__(self, app: App, *, verifier: Verifier, public: Collection[str] = ()) -> None:
        self.app = app
        self.verifier = verifier
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        headers = [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        try:
            principal = await self.verifier.verify(bearer_token(headers))
        except (ValueError, InvalidToken, Unavailable) as exc:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            elif isinstance(exc, Unavailable):
                await _answer(send, *error(503, "unavailable", str(exc)))
            else:
                await _answer(send, *error(401, "invalid_token", str(exc)))
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


async def _answer(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
