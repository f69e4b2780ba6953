"""An aiohttp API protected by authsvc: every route but /healthz needs a valid access token
of a live session, and a session ended at authsvc is refused here within a second.

    AUTHSVC_URL=http://127.0.0.1:8080 AUTHSVC_CLIENT_ID=orders AUTHSVC_CLIENT_SECRET=... \\
        python examples/aiohttp_service.py --port 8081
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

from aiohttp import web

from authsvc.resource import Principal, Verifier
from authsvc.resource.aiohttp import middleware

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/orders")
async def orders(request: web.Request) -> web.Response:
    principal: Principal = request["principal"]
    return web.json_response({"user_id": principal.user_id, "orders": []})


def create_app(verifier: Verifier) -> web.Application:
    """The API, with `verifier` started and closed with it."""
    app = web.Application(middlewares=[middleware(verifier, public={"/healthz"})])
    app.router.add_routes(routes)

    async def verifying(app: web.Application) -> AsyncIterator[None]:
        await verifier.start()
        yield
        await verifier.close()

    app.cleanup_ctx.append(verifying)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    verifier = Verifier(
        os.environ.get("AUTHSVC_URL", "http://127.0.0.1:8080"),
        client_id=os.environ["AUTHSVC_CLIENT_ID"],
        client_secret=os.environ["AUTHSVC_CLIENT_SECRET"],
    )
    web.run_app(create_app(verifier), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
