"""A FastAPI API protected by authsvc: every route but /healthz needs a valid access token
of a live session, and a session ended at authsvc is refused here within a second.

    AUTHSVC_URL=http://127.0.0.1:8080 AUTHSVC_CLIENT_ID=orders AUTHSVC_CLIENT_SECRET=... \\
        python examples/fastapi_service.py --port 8082
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request

from authsvc.resource import Principal, Verifier
from authsvc.resource.asgi import AuthMiddleware

verifier = Verifier(
    os.environ.get("AUTHSVC_URL", "http://127.0.0.1:8080"),
    client_id=os.environ.get("AUTHSVC_CLIENT_ID", ""),
    client_secret=os.environ.get("AUTHSVC_CLIENT_SECRET", ""),
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with verifier:
        yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(AuthMiddleware, verifier=verifier, public={"/healthz"})


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/orders")
async def orders(request: Request) -> dict[str, Any]:
    principal: Principal = request.state.principal
    return {"user_id": principal.user_id, "orders": []}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8082)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
