"""The endpoints for resource servers and gateways: token introspection (RFC 7662), token
revocation (RFC 7009) and the revocation stream (Server-Sent Events)."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web
from aiohttp_sse import sse_response

from authsvc.domain.errors import Unavailable
from authsvc.store.revocations import Revocation
from authsvc.web.client_auth import require_client
from authsvc.web.context import FEED, INSPECTOR, STREAMS
from authsvc.web.responses import json_response
from authsvc.web.schemas import read_token_form

routes = web.RouteTableDef()
# Seconds between comment lines on an idle stream (the contract: at most 15). Often, so that
# a client can tell a silent stream from a quiet one within a few seconds.
HEARTBEAT = 1.0
_encode = msgspec.json.Encoder().encode


@routes.post("/v1/auth/introspect")
async def introspect(request: web.Request) -> web.Response:
    await require_client(request, "introspect")
    token = await read_token_form(request)
    response = json_response(await request.app[INSPECTOR].introspect(token))
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.post("/v1/auth/revoke")
async def revoke(request: web.Request) -> web.Response:
    await request.app[INSPECTOR].revoke(await read_token_form(request))
    return web.Response(status=200)


@routes.get("/v1/revocations")
async def revocations(request: web.Request) -> web.StreamResponse:
    await require_client(request, "revocations")
    streams, feed = request.app[STREAMS], request.app[FEED]
    queue = streams.open()  # before `ready`: nothing that ends after it is missed
    try:
        if not feed.healthy:  # what ends now might not reach us
            raise Unavailable("revocations are not being heard", retry_after=1)
        async with sse_response(request, ping_interval=HEARTBEAT) as stream:
            await stream.send("{}", event="ready")
            gone = asyncio.ensure_future(stream.wait())  # the client went away
            try:
                while (ended := await _next(queue, gone)) is not None:
                    data = {"sid": ended.session_id, "sub": ended.user_id, "reason": ended.reason}
                    await stream.send(_encode(data).decode(), event="revoked")
            except ConnectionResetError:  # the client went away mid-write
                pass
            finally:
                gone.cancel()
        return stream
    finally:
        streams.close(queue)


async def _next(
    queue: asyncio.Queue[Revocation | None], gone: asyncio.Future[None]
) -> Revocation | None:
    """The next revocation for the stream, or None when the stream must end."""
    if gone.done():
        return None
    if not queue.empty():
        return queue.get_nowait()
    get = asyncio.ensure_future(queue.get())
    waiting: set[asyncio.Future[object]] = {get, gone}  # type: ignore[arg-type]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if not get.done():
        get.cancel()
        return None
    return get.result()
