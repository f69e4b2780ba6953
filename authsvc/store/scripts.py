"""The Lua scripts, one per atomic operation, registered once per client (EVALSHA with
automatic reload after NOSCRIPT, e.g. a flushed script cache or a failed-over Redis)."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from authsvc.store.client import Client


class Scripts:
    """All scripts, registered with one client."""

    def __init__(self, client: Client) -> None:
        self.create_account = _register(client, "create_account")
        self.create_session = _register(client, "create_session")
        self.rotate_session = _register(client, "rotate_session")
        self.revoke_sessions = _register(client, "revoke_sessions")
        self.list_sessions = _register(client, "list_sessions")
        self.probe_session = _register(client, "probe_session")
        self.hit_counter = _register(client, "hit_counter")


def _register(client: Client, name: str) -> AsyncScript:
    text = resources.files("authsvc.store.lua").joinpath(f"{name}.lua").read_text("utf-8")
    script: Any = client.register_script(text)
    return script  # type: ignore[no-any-return]
