"""Accounts: an email names a user id; the user's hash holds the email, the password hash
and its version. The password lives in the user's slot, so that changing it and ending the
user's other sessions is one script."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable

from authsvc.store.client import Client
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts
from authsvc.store.sessions import call_id


@dataclasses.dataclass(frozen=True, slots=True)
class AccountRecord:
    """What a password check needs of an account."""

    user_id: str
    email: str
    password_hash: str
    version: str  # of the password: a session may only start with the version it verified


@dataclasses.dataclass(frozen=True, slots=True)
class UserInfo:
    """An account as operators see it."""

    user_id: str
    email: str
    created_ms: int
    session_limit: int | None  # the user's own, or None for the default


class AccountStore:
    """Create, read and update accounts."""

    def __init__(
        self, client: Client, keys: Keys, scripts: Scripts, shift_ms: Callable[[], int]
    ) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._shift_ms = shift_ms

    async def create(self, user_id: str, email: str, password_hash: str, now_ms: int) -> bool:
        """Store a new account; False when the email is already registered.

        The user's hash is written first and the email claimed second (two slots): a crash
        in between leaves an unreachable hash, never an email that names no account."""
        user = self._keys.user(user_id)
        await self._client.hset(
            user, mapping={"email": email, "pw": password_hash, "pv": 0, "c": now_ms}
        )
        k = self._keys
        keys = [k.email(email), *k.email_outbox(email)]
        owner = await self._scripts.claim_email(
            keys=keys, args=[user_id, email, k.bell, self._shift_ms()]
        )
        if owner is None or owner == user_id:  # claimed (or claimed by a replay of this call)
            return True
        # A claim whose account is gone (a deletion that stopped before releasing the email)
        # is taken over, atomically: two signups for it cannot both win.
        orphaned = not await self._client.exists(k.user(str(owner)))
        if orphaned and await self._scripts.swap_email(
            keys=keys, args=[owner, user_id, email, k.bell, self._shift_ms()]
        ):
            return True
        await self._client.delete(user)
        return False

    async def user_id(self, email: str) -> str | None:
        """The user registered under `email`, if any."""
        user_id = await self._client.get(self._keys.email(email))
        return None if user_id is None else str(user_id)

    async def info(self, user_id: str) -> UserInfo | None:
        """The account of a user id, as operators see it."""
        email, created, limit = await self._client.hmget(
            self._keys.user(user_id), ["email", "c", "lim"]
        )
        if email is None:
            return None
        return UserInfo(user_id, str(email), int(created or 0), int(limit) if limit else None)

    async def set_session_limit(self, user_id: str, limit: int | None) -> bool:
        """Set the user's own session limit (None: the default); False for no such user."""
        done = await self._scripts.set_session_limit(
            keys=[self._keys.user(user_id)], args=["" if limit is None else limit]
        )
        return bool(done)

    async def delete(self, user_id: str, email: str) -> list[str]:
        """Delete the account and end its sessions (tombstones stay); returns those ended.
        Two slots: the user's first, then the email's claim is released; a claim left by a
        deletion that stopped in between is taken over by the next signup (see `create`)."""
        k = self._keys
        ended: list[str] = await self._scripts.delete_account.replicated(
            marker=k.replication_marker,
            keys=[
                k.user(user_id),
                k.session_index(user_id),
                k.ended(user_id),
                *k.user_outbox(user_id),
            ],
            args=[k.channel, user_id, call_id(), self._shift_ms(), k.bell],
        )
        await self._scripts.swap_email(
            keys=[k.email(email), *k.email_outbox(email)],
            args=[user_id, "", email, k.bell, self._shift_ms()],
        )
        return ended

    async def find(self, email: str) -> AccountRecord | None:
        """The account registered under `email`, if any. An unknown email costs the same
        two round trips as a known one."""
        user_id = await self._client.get(self._keys.email(email))
        uid = str(user_id) if user_id is not None else secrets.token_urlsafe(16)
        found = await self._user(uid)
        return found if user_id is not None else None

    async def of_user(self, user_id: str) -> AccountRecord | None:
        """The account of a user id, if it exists."""
        return await self._user(user_id)

    async def change_password(
        self, account: AccountRecord, password_hash: str, *, keep: str
    ) -> list[str] | None:
        """Set a new password and end every session of the user but `keep`, in one step;
        returns the sessions ended, or None when the password changed since `account` was
        read (nothing written)."""
        k = self._keys
        ended: list[str] | None = await self._scripts.change_password.replicated(
            marker=k.replication_marker,
            keys=[
                k.user(account.user_id),
                k.session_index(account.user_id),
                k.ended(account.user_id),
                *k.user_outbox(account.user_id),
            ],
            args=[
                password_hash,
                account.version,
                keep,
                k.channel,
                account.user_id,
                call_id(),
                self._shift_ms(),
                k.bell,
            ],
        )
        return ended

    async def rehash(self, account: AccountRecord, password_hash: str) -> None:
        """Replace the hash of an unchanged password (a new bcrypt cost); a no-op when the
        password changed meanwhile."""
        await self._scripts.rehash_password(
            keys=[self._keys.user(account.user_id)], args=[account.password_hash, password_hash]
        )

    async def _user(self, user_id: str) -> AccountRecord | None:
        email, pw, version = await self._client.hmget(
            self._keys.user(user_id), ["email", "pw", "pv"]
        )
        if email is None or pw is None or version is None:
            return None
        return AccountRecord(str(user_id), str(email), str(pw), str(version))
