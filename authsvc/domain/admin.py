"""What operators do with accounts (service clients with the `admin` scope): find a user,
list and end their sessions, set their own session limit, delete the account."""

from __future__ import annotations

from authsvc.domain.errors import InvalidRequest, NotFound
from authsvc.domain.service import AuthService, SessionInfo, normalize_email
from authsvc.domain.tokens import is_id
from authsvc.store.accounts import AccountStore, UserInfo

MAX_SESSION_LIMIT = 1000  # as AUTHSVC_SESSION_LIMIT


class AdminService:
    """The admin API, in domain terms; NotFound for users or sessions that do not exist."""

    def __init__(self, accounts: AccountStore, service: AuthService) -> None:
        self._accounts = accounts
        self._service = service

    async def find(self, email: str) -> UserInfo:
        """The account registered under `email`."""
        user_id = await self._accounts.user_id(normalize_email(email))
        if user_id is None:
            raise NotFound("no such user")
        return await self.user(user_id)

    async def user(self, user_id: str) -> UserInfo:
        """The account of `user_id`."""
        info = await self._accounts.info(user_id) if is_id(user_id) else None
        if info is None:
            raise NotFound("no such user")
        return info

    async def sessions(self, user_id: str) -> list[SessionInfo]:
        """The user's live sessions, most recently used first."""
        await self.user(user_id)
        return await self._service.sessions_of(user_id)

    async def end_sessions(self, user_id: str, only: str | None = None) -> None:
        """End every session of the user, or only `only` (reason `revoked`)."""
        await self.user(user_id)
        if only is not None and not is_id(only):
            raise NotFound("no such session")
        ended = await self._service.end_sessions(user_id, "revoked", only=only)
        if only is not None and not ended:
            raise NotFound("no such session")

    async def set_session_limit(self, user_id: str, limit: object) -> None:
        """The user's own session limit (None: back to the default), from their next login."""
        if limit is not None and (
            not isinstance(limit, int)
            or isinstance(limit, bool)
            or not 1 <= limit <= MAX_SESSION_LIMIT
        ):
            raise InvalidRequest(f"limit must be null or a whole number 1 to {MAX_SESSION_LIMIT}")
        if not is_id(user_id) or not await self._accounts.set_session_limit(user_id, limit):
            raise NotFound("no such user")

    async def delete(self, user_id: str) -> None:
        """Delete the account, as its owner would (reason `account_deleted`)."""
        info = await self.user(user_id)
        await self._service.delete_user(user_id, info.email)
