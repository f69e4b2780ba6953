"""Baseline 2: aiohttp-session with its RedisStorage guarding a handler that reads the session.

Every GET /me loads the session named by the cookie from Redis (one GET) and answers with
what it holds; nothing is written back, because the handler does not change the session.
POST /login creates a session and sets the cookie that the benchmark then sends.
Run by bench/run.py as `python bench/baseline_session.py --port P --redis-url URL`."""

from __future__ import annotations

import argparse
import secrets
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import uvloop
from aiohttp import web
from aiohttp_session import get_session, new_session, session_middleware
from aiohttp_session.redis_storage import RedisStorage

SESSION_MAX_AGE = 14 * 24 * 3600


async def login(request: web.Request) -> web.Response:
    """Start a session for a made-up user (no password: only the session is measured)."""
    session = await new_session(request)
    user_id = secrets.token_urlsafe(16)
    session["user_id"] = user_id
    session["email"] = f"{user_id.lower()}@bench.example"
    return web.json_response({"user_id": user_id})


async def me(request: web.Request) -> web.Response:
    """The session's user, or 401 without a valid session cookie."""
    session = await get_session(request)
    if "user_id" not in session:
        return web.json_response({"error": "invalid_token"}, status=401)
    return web.json_response(
        {"user_id": session["user_id"], "email": session["email"], "session_id": session.identity}
    )


async def healthz(request: web.Request) -> web.Response:
    """Readiness probe for the benchmark driver."""
    return web.Response(text="ok")


def create_app(redis_url: str) -> web.Application:
    """The application: the session middleware over POST /login and GET /me."""
    client = aioredis.Redis.from_url(redis_url)
    storage = RedisStorage(client, max_age=SESSION_MAX_AGE, httponly=True, samesite="Lax")
    app = web.Application(middlewares=[session_middleware(storage)])
    app.router.add_post("/login", login)
    app.router.add_get("/me", me)
    app.router.add_get("/healthz", healthz)

    async def close_redis(app: web.Application) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app.cleanup_ctx.append(close_redis)
    return app


def main() -> None:
    """Serve on 127.0.0.1:--port until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(args.redis_url),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),  # as a performance-minded aiohttp team runs it
    )


if __name__ == "__main__":
    main()
