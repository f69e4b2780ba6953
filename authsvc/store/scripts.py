"""The Lua scripts, one per atomic operation, registered once per client: EVALSHA, loaded
again after NOSCRIPT (a flushed script cache, a restarted or failed-over Redis). On a single
server the calls are pipelined automatically (BoundedRedis.evalsha_batched). Each script is
sent with `_lib.lua` before it: time from Redis, tombstones and revocation messages are
written once."""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from authsvc.store.client import BoundedRedis, Client


def _read(name: str) -> str:
    return resources.files("authsvc.store.lua").joinpath(f"{name}.lua").read_text("utf-8")


_LIB = _read("_lib")


def script_text(name: str) -> str:
    """What is sent to Redis for the script `name`."""
    return _LIB + _read(name)


class Script:
    """One script, called as `await script(keys=[...], args=[...])`. A `durable` script
    ends sessions (or changes what a failover must not undo): where the primary has
    replicas, its call succeeds only once a replica has it (BoundedRedis.evalsha_batched)."""

    def __init__(self, client: Client, name: str, *, durable: bool = False) -> None:
        self.text = script_text(name)
        self._script: AsyncScript = client.register_script(self.text)
        self._batched = client if isinstance(client, BoundedRedis) else None
        self._durable = durable

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        if self._batched is None:
            return await self._script(keys=keys, args=args)
        sha, durable = self._script.sha, self._durable
        try:
            return await self._batched.evalsha_batched(sha, keys, args, durable=durable)
        except NoScriptError:  # it did not run (a restarted or promoted server): load it
            await self._batched.script_load(self.text)
            return await self._batched.evalsha_batched(sha, keys, args, durable=durable)


class Scripts:
    """All scripts, registered with one client."""

    def __init__(self, client: Client) -> None:
        # Durable: every script that ends sessions, or whose loss in a failover would make a
        # session's next refresh look like token reuse (rotate_session).
        self.create_session = Script(client, "create_session", durable=True)
        self.rotate_session = Script(client, "rotate_session", durable=True)
        self.revoke_sessions = Script(client, "revoke_sessions", durable=True)
        self.list_sessions = Script(client, "list_sessions")
        self.probe_session = Script(client, "probe_session")
        self.change_password = Script(client, "change_password", durable=True)
        self.rehash_password = Script(client, "rehash_password")
        self.throttle = Script(client, "throttle")
        self.delete_account = Script(client, "delete_account", durable=True)
        self.claim_email = Script(client, "claim_email")
        self.swap_email = Script(client, "swap_email")
        self.set_session_limit = Script(client, "set_session_limit")
        self.ack_event = Script(client, "ack_event")
