"""A backend's handler, with authsvc.resource's aiohttp middleware (`--protected`) or without:
the cost the middleware adds is the ratio of the two. Run by bench/backends.py as
`python bench/resource_backend.py --port P [--protected]`."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

from aiohttp import web

from authsvc.resource import Verifier
from authsvc.resource.aiohttp import middleware

BODY = b'{"orders":[]}'


async def constant(request: web.Request) -> web.Response:
    """The same bytes for every request."""
    return web.Response(body=BODY, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    """Readiness probe for the benchmark driver."""
    return web.Response(text="ok")


def create_app(verifier: Verifier | None) -> web.Application:
    """GET /me (protected by `verifier` when given) and GET /healthz."""
    middlewares = [] if verifier is None else [middleware(verifier, public={"/healthz"})]
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/me", constant)
    app.router.add_get("/healthz", healthz)
    if verifier is not None:

        async def verifying(app: web.Application) -> AsyncIterator[None]:
            async with verifier:
                yield

        app.cleanup_ctx.append(verifying)
    return app


def main() -> None:
    """Serve on 127.0.0.1:--port until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protected", action="store_true")
    args = parser.parse_args()
    verifier = None
    if args.protected:
        verifier = Verifier(
            os.environ["AUTHSVC_URL"],
            client_id=os.environ["AUTHSVC_CLIENT_ID"],
            client_secret=os.environ["AUTHSVC_CLIENT_SECRET"],
        )
    web.run_app(create_app(verifier), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
