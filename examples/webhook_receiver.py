"""A webhook receiver for authsvc's events: verifies each delivery with the Standard Webhooks
library, skips the ones it has seen (delivery is at least once), and prints each event as a
JSON line.

    WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 9000
    # and authsvc with AUTHSVC_WEBHOOK_URL=http://127.0.0.1:9000/webhooks
    #                  AUTHSVC_WEBHOOK_SECRET=whsec_... (the same secret)
"""

from __future__ import annotations

import argparse
import json
import os

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

SEEN = web.AppKey("seen", set[str])
VERIFIER = web.AppKey("verifier", Webhook)


async def receive(request: web.Request) -> web.Response:
    body = await request.text()
    try:
        event = request.app[VERIFIER].verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.Response(status=400)  # not from authsvc, or replayed too late
    webhook_id = request.headers["webhook-id"]
    if webhook_id not in request.app[SEEN]:  # a retry of one already handled is answered 2xx
        request.app[SEEN].add(webhook_id)  # a real receiver keeps these in its database
        print(json.dumps({"id": webhook_id, **event}), flush=True)
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def create_app(secret: str) -> web.Application:
    app = web.Application()
    app[VERIFIER] = Webhook(secret)
    app[SEEN] = set()
    app.router.add_post("/webhooks", receive)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    port = parser.parse_args().port
    web.run_app(create_app(os.environ["WEBHOOK_SECRET"]), host="127.0.0.1", port=port)
