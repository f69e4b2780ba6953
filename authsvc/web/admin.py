"""The admin API: service clients with the `admin` scope find users, list and end their
sessions, set their session limit and delete accounts."""

from __future__ import annotations

from aiohttp import web

from authsvc.domain.clock import rfc3339
from authsvc.domain.errors import InvalidRequest
from authsvc.web.client_auth import require_client
from authsvc.web.context import ADMIN, SETTINGS
from authsvc.web.responses import json_response, session_json
from authsvc.web.schemas import SessionLimit, read_body

routes = web.RouteTableDef()


async def _admin(request: web.Request) -> None:
    await require_client(request, "admin")


@routes.get("/v1/admin/users")
async def find_user(request: web.Request) -> web.Response:
    await _admin(request)
    emails = request.query.getall("email", [])
    if len(emails) != 1:
        raise InvalidRequest("exactly one email parameter is required")
    user = await request.app[ADMIN].find(emails[0])
    return json_response(
        {
            "user_id": user.user_id,
            "email": user.email,
            "created_at": rfc3339(user.created_ms / 1000),
            "session_limit": user.session_limit or request.app[SETTINGS].session_limit,
        }
    )


@routes.get("/v1/admin/users/{user_id}/sessions")
async def user_sessions(request: web.Request) -> web.Response:
    await _admin(request)
    sessions = await request.app[ADMIN].sessions(request.match_info["user_id"])
    return json_response({"sessions": [session_json(s, with_current=False) for s in sessions]})


@routes.delete("/v1/admin/users/{user_id}/sessions")
async def end_user_sessions(request: web.Request) -> web.Response:
    await _admin(request)
    await request.app[ADMIN].end_sessions(request.match_info["user_id"])
    return web.Response(status=204)


@routes.delete("/v1/admin/users/{user_id}/sessions/{session_id}")
async def end_user_session(request: web.Request) -> web.Response:
    await _admin(request)
    info = request.match_info
    await request.app[ADMIN].end_sessions(info["user_id"], only=info["session_id"])
    return web.Response(status=204)


@routes.put("/v1/admin/users/{user_id}/session-limit")
async def set_session_limit(request: web.Request) -> web.Response:
    await _admin(request)
    body = await read_body(request, SessionLimit)
    await request.app[ADMIN].set_session_limit(request.match_info["user_id"], body.limit)
    return web.Response(status=204)


@routes.delete("/v1/admin/users/{user_id}")
async def delete_user(request: web.Request) -> web.Response:
    await _admin(request)
    await request.app[ADMIN].delete(request.match_info["user_id"])
    return web.Response(status=204)
