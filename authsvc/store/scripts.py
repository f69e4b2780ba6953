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
    """One script, called as `await script(keys=[...], args=[...])`."""

    def __init__(self, client: Client, name: str) -> None:
        self.text = script_text(name)
        self._script: AsyncScript = client.register_script(self.text)
        self._batched = client if isinstance(client, BoundedRedis) else None

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        if self._batched is None:
            return await self._script(keys=keys, args=args)
        try:
            return await self._batched.evalsha_batched(self._script.sha, keys, args)
        except NoScriptError:  # it did not run; redis-py's script loads it and runs it
            return await self._script(keys=keys, args=args)

    async def replicated(self, *, keys: list[str], args: list[Any], marker: str) -> Any:
        """The call, acknowledged only once a replica has it (for changes that end
        sessions; see BoundedRedis.evalsha_replicated); a plain call on a cluster."""
        if self._batched is None:
            return await self._script(keys=keys, args=args)
        sha = self._script.sha
        try:
            return await self._batched.evalsha_replicated(sha, keys, args, marker)
        except NoScriptError:  # it did not run (a restarted or promoted server): load it
            await self._batched.script_load(self.text)
            return await self._batched.evalsha_replicated(sha, keys, args, marker)


class Scripts:
    """All scripts, registered with one client."""

    def __init__(self, client: Client) -> None:
        self.create_session = Script(client, "create_session")
        self.rotate_session = Script(client, "rotate_session")
        self.revoke_sessions = Script(client, "revoke_sessions")
        self.list_sessions = Script(client, "list_sessions")
        self.probe_session = Script(client, "probe_session")
        self.change_password = Script(client, "change_password")
        self.rehash_password = Script(client, "rehash_password")
        self.throttle = Script(client, "throttle")
        self.delete_account = Script(client, "delete_account")
        self.claim_email = Script(client, "claim_email")
        self.swap_email = Script(client, "swap_email")
        self.set_session_limit = Script(client, "set_session_limit")
        self.ack_event = Script(client, "ack_event")
