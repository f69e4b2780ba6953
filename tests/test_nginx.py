"""The documented nginx forward-auth example (config/nginx-forward-auth.conf), run for real."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import free_port
from tests.helpers import Client, bearer, login, signup

EXAMPLE = Path(__file__).parent.parent / "config" / "nginx-forward-auth.conf"


async def _echo_identity(request: web.Request) -> web.Response:
    return web.json_response({"user": request.headers.get("X-Auth-User-Id"), "path": request.path})


@pytest.fixture
async def api() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_get("/api/{tail:.*}", _echo_identity)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def nginx(client: Client, api: TestServer, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        pytest.fail("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    example = (
        EXAMPLE.read_text()
        .replace("127.0.0.1:8080", f"127.0.0.1:{client.server.port}")
        .replace("127.0.0.1:9000", f"127.0.0.1:{api.port}")
        .replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    temp.chmod(0o777)  # nginx workers may run as another user
    paths = " ".join(
        f"{kind}_temp_path {temp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"daemon off; worker_processes 1; pid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; {paths}\n{example}\n}}\n"
    )
    process = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        assert process.poll() is None, (tmp_path / "error.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


async def test_nginx_auth_request_lets_valid_tokens_through_with_identity(
    client: Client, nginx: str
) -> None:
    user_id = await signup(client, "gateway@example.com")
    tokens = await login(client, "gateway@example.com")
    async with aiohttp.ClientSession(nginx) as http:
        allowed = await http.get("/api/orders", headers=bearer(tokens))
        assert allowed.status == 200
        assert await allowed.json() == {"user": user_id, "path": "/api/orders"}
        denied = await http.get("/api/orders")
        assert denied.status == 401
        forged = await http.get(
            "/api/orders",
            headers={"Authorization": "Bearer not-a-token", "X-Auth-User-Id": user_id},
        )
        assert forged.status == 401
        await http.post("/v1/auth/logout", headers=bearer(tokens))
        assert (await http.get("/api/orders", headers=bearer(tokens))).status == 401
