"""Request handlers: read the request, call the domain, write the response."""

from __future__ import annotations

from collections.abc import Awaitable
from importlib import resources

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from authsvc.domain.errors import InvalidToken, Unavailable
from authsvc.domain.service import Principal, TokenSet
from authsvc.domain.tokens import MAX_ACCESS_TOKEN_LENGTH
from authsvc.web.client_ip import request_ip
from authsvc.web.context import KEYRING, METRICS, SERVICE
from authsvc.web.responses import json_response, session_json
from authsvc.web.schemas import (
    AccountDeletion,
    Credentials,
    PasswordChange,
    RefreshRequest,
    read_body,
)

routes = web.RouteTableDef()
_OPENAPI = resources.files("authsvc.web").joinpath("openapi.json").read_bytes()


def _principal(request: web.Request, *, ended_by: str = "") -> Awaitable[Principal]:
    # Not a coroutine itself: a malformed header fails here, a token is checked by the
    # service's coroutine, one layer less for every authenticated request to go through.
    headers = request.headers.getall(hdrs.AUTHORIZATION, ())
    if not headers:
        raise InvalidToken("Bearer token required", presented=False)
    if len(headers) > 1:  # which one a proxy or client meant is not ours to guess
        raise InvalidToken("more than one Authorization header")
    scheme, _, token = headers[0].partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > MAX_ACCESS_TOKEN_LENGTH:
        raise InvalidToken("malformed Authorization header")
    return request.app[SERVICE].authenticate(token.strip(), ended_by=ended_by)


def _tokens(tokens: TokenSet) -> web.Response:
    return json_response(
        {
            "access_token": tokens.access_token,
            "token_type": "Bearer",
            "expires_in": tokens.expires_in,
            "refresh_token": tokens.refresh_token,
            "refresh_expires_in": tokens.refresh_expires_in,
            "session_id": tokens.session_id,
        }
    )


@routes.post("/v1/auth/signup")
async def signup(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials)
    user_id, email = await request.app[SERVICE].signup(
        body.email, body.password, request_ip(request)
    )
    return json_response({"user_id": user_id, "email": email}, status=201)


@routes.post("/v1/auth/login")
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials)
    tokens = await request.app[SERVICE].login(
        body.email,
        body.password,
        ip=request_ip(request),
        user_agent=request.headers.get("User-Agent", ""),
    )
    return _tokens(tokens)


@routes.post("/v1/auth/refresh")
async def refresh(request: web.Request) -> web.Response:
    body = await read_body(request, RefreshRequest)
    tokens = await request.app[SERVICE].refresh(
        body.refresh_token,
        ip=request_ip(request),
        user_agent=request.headers.get("User-Agent", ""),
    )
    return _tokens(tokens)


@routes.post("/v1/auth/logout")
async def logout(request: web.Request) -> web.Response:
    # A retry of a logout (its answer lost, or 503) finds the session ended by logout: 204.
    await request.app[SERVICE].logout(await _principal(request, ended_by="logout"))
    return web.Response(status=204)


@routes.post("/v1/auth/logout-all")
async def logout_all(request: web.Request) -> web.Response:
    await request.app[SERVICE].logout_all(await _principal(request, ended_by="logout_all"))
    return web.Response(status=204)


@routes.post("/v1/auth/password")
async def change_password(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await read_body(request, PasswordChange)
    await request.app[SERVICE].change_password(principal, body.current_password, body.new_password)
    return web.Response(status=204)


@routes.get("/v1/me")
async def me(request: web.Request) -> web.Response:
    p = await _principal(request)
    return json_response({"user_id": p.user_id, "email": p.email, "session_id": p.session_id})


@routes.get("/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    sessions = await request.app[SERVICE].list_sessions(await _principal(request))
    return json_response({"sessions": [session_json(s, with_current=True) for s in sessions]})


@routes.delete("/v1/me")
async def delete_account(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await read_body(request, AccountDeletion)
    await request.app[SERVICE].delete_account(principal, body.password, ip=request_ip(request))
    return web.Response(status=204)


@routes.delete("/v1/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    principal = await _principal(request)
    await request.app[SERVICE].end_session(principal, request.match_info["session_id"])
    return web.Response(status=204)


@routes.get("/v1/auth/verify")
async def verify(request: web.Request) -> web.Response:
    p = await _principal(request)
    return web.Response(
        status=200, headers={"X-Auth-User-Id": p.user_id, "X-Auth-Session-Id": p.session_id}
    )


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    response = json_response(request.app[KEYRING].public_jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        ready = await request.app[SERVICE].ready()
    except Exception:
        ready = False
    if not ready:
        raise Unavailable("storage does not answer", retry_after=1)
    return json_response({"status": "ready"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.flush()  # with several workers: this one's latest requests too
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_OPENAPI, content_type="application/json")
