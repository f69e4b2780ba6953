"""Baseline 1: a bare aiohttp handler that returns a constant (no middleware, no storage).

Run by bench/run.py as `python bench/baseline_bare.py --port P`."""

from __future__ import annotations

import argparse

import uvloop
from aiohttp import web

# About the size and type of authsvc's GET /v1/me body.
BODY = (
    b'{"user_id":"lZ0eJ6Hqk1mQhVb2bDqvUg","email":"bench-me-0@bench.example",'
    b'"session_id":"c3fA9Kx0yQ2dN7pWm1uLZg"}'
)


async def constant(request: web.Request) -> web.Response:
    """The same bytes for every request."""
    return web.Response(body=BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """Readiness probe for the benchmark driver."""
    return web.Response(text="ok")


def create_app() -> web.Application:
    """The bare application: GET /me and GET /healthz."""
    app = web.Application()
    app.router.add_get("/me", constant)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    """Serve on 127.0.0.1:--port until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),  # as a performance-minded aiohttp team runs it
    )


if __name__ == "__main__":
    main()
