"""Accounts keyed by normalized email."""

from __future__ import annotations

import dataclasses

from authsvc.store.client import Client
from authsvc.store.keys import Keys
from authsvc.store.scripts import Scripts


@dataclasses.dataclass(frozen=True, slots=True)
class AccountRecord:
    """What login needs of an account."""

    user_id: str
    email: str
    password_hash: str


class AccountStore:
    """Create, read and update accounts."""

    def __init__(self, client: Client, keys: Keys, scripts: Scripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    async def create(self, user_id: str, email: str, password_hash: str, now_ms: int) -> bool:
        """Store a new account; False when the email is already registered."""
        owner = await self._scripts.create_account(
            keys=[self._keys.account(email)], args=[user_id, email, password_hash, now_ms]
        )
        return bool(owner == user_id)

    async def get(self, email: str) -> AccountRecord | None:
        """The account registered under `email`, if any."""
        uid, pw = await self._client.hmget(self._keys.account(email), ["uid", "pw"])
        if uid is None or pw is None:
            return None
        return AccountRecord(user_id=str(uid), email=email, password_hash=str(pw))

    async def email_of(self, user_id: str) -> str | None:
        """The email of a user who has logged in at least once."""
        email = await self._client.hget(self._keys.user(user_id), "email")
        return None if email is None else str(email)

    async def set_password_hash(self, email: str, password_hash: str) -> None:
        """Replace an existing account's password hash."""
        await self._client.hset(self._keys.account(email), "pw", password_hash)
