"""The operations of authsvc: accounts, logins, token refresh, sessions."""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from prometheus_client import Counter

from authsvc.domain.clock import Clock
from authsvc.domain.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidGrant,
    InvalidRequest,
    InvalidToken,
    NotFound,
    RateLimited,
    SessionLimitReached,
)
from authsvc.domain.gate import SessionGate
from authsvc.domain.passwords import Hasher, new_password, normalize_password
from authsvc.domain.throttle import Throttle
from authsvc.domain.tokens import (
    AccessClaims,
    AccessTokens,
    RefreshTokens,
    TokenExpired,
    is_id,
    new_id,
)
from authsvc.metrics import Metrics
from authsvc.store import user_agents
from authsvc.store.accounts import AccountRecord, AccountStore
from authsvc.store.sessions import Refused, Rotation, SessionRow, SessionStore

log = logging.getLogger(__name__)

MAX_EMAIL_LENGTH = 254
# One '@', a dot in the domain; no white space, control characters or lone surrogates
# inside; white space around is trimmed. The OpenAPI document states the same pattern.
_EMAIL_PART = r"[^@\s\x00-\x1f\x7f-\x9f\ud800-\udfff]+"
EMAIL_PATTERN = rf"^\s*{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}\s*$"
_EMAIL = re.compile(EMAIL_PATTERN)


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    """Session limits and lifetimes, in seconds."""

    session_limit: int
    idle_ttl: int
    max_ttl: int
    refresh_grace: int
    limit_policy: str = "evict"  # or "deny"

    def expires_at(self, last_used_at: float, created_at: float) -> float:
        """When a session ends: the earlier of its idle and its absolute end (seconds)."""
        return min(last_used_at + self.idle_ttl, created_at + self.max_ttl)


class TokenSet(NamedTuple):
    """What login and refresh return."""

    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    session_id: str


class Principal(NamedTuple):
    """The caller behind a valid access token (a tuple: made on every authenticated request,
    and a frozen dataclass costs several times as much to build)."""

    user_id: str
    session_id: str
    email: str
    # The session already ended, for the reason the caller allowed (a retried logout).
    ended: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as shown to its user (times in Unix seconds)."""

    session_id: str
    created_at: float
    last_used_at: float
    expires_at: float
    user_agent: str | None
    ip: str | None
    current: bool


def _user_agent(header: str) -> str:
    """A User-Agent header (its first MAX_LENGTH characters) as storable text: bytes that
    were not UTF-8, which the HTTP parser keeps as lone surrogates, become "?". The store
    packs it (store/user_agents.py)."""
    return header[: user_agents.MAX_LENGTH].encode("utf-8", "replace").decode()


def normalize_email(email: str) -> str:
    """Trim, NFC-normalize and lower-case an email; InvalidRequest if it is not one."""
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(email):
        raise InvalidRequest("email is not a valid address")
    return unicodedata.normalize("NFC", email.strip()).lower()


class AuthService:
    """Every operation the HTTP API offers, in domain terms."""

    def __init__(
        self,
        *,
        accounts: AccountStore,
        sessions: SessionStore,
        hasher: Hasher,
        throttle: Throttle,
        access: AccessTokens,
        refresh: RefreshTokens,
        gate: SessionGate,
        policy: Policy,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self._accounts = accounts
        self._sessions = sessions
        self._hasher = hasher
        self._throttle = throttle
        self._access = access
        self._refresh = refresh
        self._gate = gate
        self._policy = policy
        self._clock = clock
        self._metrics = metrics
        # The outcomes of nearly every login and refresh, looked up once.
        self._logged_in = metrics.logins.labels("success")
        self._refreshed = metrics.refreshes.labels("success")

    async def signup(self, email: str, password: str, ip: str) -> tuple[str, str]:
        """Register an account; returns (user_id, normalized email)."""
        email = normalize_email(email)
        password = new_password(password)
        await self._throttle.count_attempt(ip)
        password_hash = await self._hasher.hash(password)
        user_id = new_id()
        created = await self._accounts.create(user_id, email, password_hash, self._now_ms())
        if not created:
            raise EmailTaken()
        log.info("signup", extra={"user_id": user_id})
        return user_id, email

    async def login(self, email: str, password: str, *, ip: str, user_agent: str) -> TokenSet:
        """Check credentials and start a session, evicting beyond the session limit."""
        email = normalize_email(email)
        password = normalize_password(password)  # rules apply to new passwords only
        await self._throttle.count_attempt(ip)
        account = await self._check_password(
            email, password, lambda: self._accounts.find(email), outcomes=self._metrics.logins
        )
        session_id = new_id()
        created = await self._sessions.create(
            user_id=account.user_id,
            session_id=session_id,
            password_version=account.version,
            limit=self._policy.session_limit,
            policy=self._policy.limit_policy,
            user_agent=_user_agent(user_agent),
            ip=ip,
        )
        if created is Refused.LIMIT_REACHED:
            self._metrics.logins.labels("limit_reached").inc()
            raise SessionLimitReached()
        if created is Refused.STALE_PASSWORD:  # changed (or the account went) since the check
            self._metrics.logins.labels("failure").inc()
            raise InvalidCredentials()
        for victim in created.evicted:
            self._gate.revoked(victim, "evicted")
        self._metrics.evictions.inc(len(created.evicted))
        self._logged_in.inc()
        log.info(
            "login",
            extra={
                "user_id": account.user_id,
                "session_id": session_id,
                "evicted": len(created.evicted),
            },
        )
        at = created.created_ms / 1000
        return await self._tokens(
            account.user_id, session_id, 0, now=at, created_at=at, last_used_at=at
        )

    async def refresh(self, refresh_token: str, *, ip: str, user_agent: str) -> TokenSet:
        """Rotate a refresh token (see rotate_session.lua for grace and reuse); `ip` and
        `user_agent` are the caller's, reported if the token turns out to be reused."""
        try:
            claims = self._refresh.parse(refresh_token)
        except InvalidGrant:
            self._metrics.refreshes.labels("invalid").inc()
            raise
        result = await self._sessions.rotate(
            user_id=claims.user_id,
            session_id=claims.session_id,
            generation=claims.generation,
            grace_ms=self._policy.refresh_grace * 1000,
            user_agent=_user_agent(user_agent),
            ip=ip,
        )
        if result.outcome is Rotation.REUSED:
            self._gate.revoked(claims.session_id, result.reason)
            self._metrics.refreshes.labels("reused").inc()
            self._metrics.reuse_detected.inc()
            log.warning(
                "refresh token reuse: session revoked",
                extra={"user_id": claims.user_id, "session_id": claims.session_id},
            )
            raise InvalidGrant("refresh token reused; session revoked", reason=result.reason)
        if result.outcome is Rotation.UNKNOWN:
            self._metrics.refreshes.labels("invalid").inc()
            raise InvalidGrant("session ended", reason=result.reason)
        self._refreshed.inc()
        return await self._tokens(
            claims.user_id,
            claims.session_id,
            result.generation,
            now=result.now_ms / 1000,
            created_at=result.created_ms / 1000,
            last_used_at=result.last_used_ms / 1000,
        )

    async def authenticate(self, token: str, *, ended_by: str = "") -> Principal:
        """The caller behind a Bearer token; InvalidToken if it is not valid now (with why
        its session ended, when it did: also for a token past its own `exp`). With
        `ended_by`, a session that ended for that reason is a Principal too (`ended`): a
        logout retried by its client."""
        now = self._clock()
        try:
            claims: AccessClaims = self._access.verify(token, now)
        except TokenExpired as expired:
            ended = expired.claims
            reason = await self._gate.why_ended(ended.user_id, ended.session_id)
            raise InvalidToken("token expired", reason=reason) from None
        email = self._gate.known_live(claims.session_id, now)  # most requests: no await
        if email is not None:
            return Principal(claims.user_id, claims.session_id, email)
        try:
            email = await self._gate.admit(claims.user_id, claims.session_id)
        except InvalidToken as refused:
            if not ended_by or refused.reason != ended_by:
                raise
            return Principal(claims.user_id, claims.session_id, "", ended=True)
        return Principal(claims.user_id, claims.session_id, email)

    async def logout(self, principal: Principal) -> None:
        """End the caller's session. A retry (its session already ended by logout) runs
        the ending again: a session that a failover brought back ends again, and the answer
        waits for a replica as the first one did."""
        await self.end_sessions(principal.user_id, "logout", only=principal.session_id)

    async def logout_all(self, principal: Principal) -> None:
        """End every session of the caller. A retry ends the caller's own session again
        and nothing else: a token of an ended session must not end the sessions made since."""
        only = principal.session_id if principal.ended else None
        await self.end_sessions(principal.user_id, "logout_all", only=only)

    async def end_session(self, principal: Principal, session_id: str) -> None:
        """End one of the caller's sessions; NotFound if it is not theirs."""
        if not is_id(session_id) or not await self.end_sessions(
            principal.user_id, "revoked", only=session_id
        ):
            raise NotFound("no such session")

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        """Replace the password and end every other session of the user, in one step."""
        new = new_password(new)
        account = await self._check_password(
            principal.email,
            normalize_password(current),
            lambda: self._accounts.of_user(principal.user_id),
            outcomes=None,
            wrong="current password is wrong",
        )
        ended = await self._accounts.change_password(
            account, await self._hasher.hash(new), keep=principal.session_id
        )
        if ended is None:  # changed by a concurrent request since the check
            raise InvalidCredentials("current password is wrong")
        for session_id in ended:
            self._gate.revoked(session_id, "password_changed")
        self._metrics.logouts.labels("password_changed").inc(len(ended))
        log.info("password changed", extra={"user_id": principal.user_id, "ended": len(ended)})

    async def list_sessions(self, principal: Principal) -> list[SessionInfo]:
        """The caller's live sessions, most recently used first."""
        return await self.sessions_of(principal.user_id, current=principal.session_id)

    async def sessions_of(self, user_id: str, *, current: str = "") -> list[SessionInfo]:
        """A user's live sessions, most recently used first."""
        rows = await self._sessions.list(user_id)
        return [self._info(row, current) for row in rows]

    async def delete_account(self, principal: Principal, password: str, *, ip: str) -> None:
        """Delete the caller's account, if `password` is its password (throttled as logins
        are): every session ends (`account_deleted`) and the email can sign up again."""
        await self._throttle.count_attempt(ip)
        await self._check_password(
            principal.email,
            normalize_password(password),
            lambda: self._accounts.of_user(principal.user_id),
            outcomes=None,
            wrong="password is wrong",
        )
        await self.delete_user(principal.user_id, principal.email)

    async def delete_user(self, user_id: str, email: str) -> None:
        """Delete an account and end every session of it (`account_deleted`)."""
        ended = await self._accounts.delete(user_id, email)
        for session_id in ended:
            self._gate.revoked(session_id, "account_deleted")
        self._metrics.logouts.labels("account_deleted").inc(len(ended))
        log.info("account deleted", extra={"user_id": user_id, "ended": len(ended)})

    async def ready(self) -> bool:
        """True when storage answers."""
        return await self._sessions.ping()

    async def _check_password(
        self,
        email: str,
        password: str,
        find: Callable[[], Awaitable[AccountRecord | None]],
        *,
        outcomes: Counter | None,
        wrong: str | None = None,
    ) -> AccountRecord:
        """The account whose password `password` is; InvalidCredentials otherwise.

        Every password check of an email, wherever it happens, goes through the email's
        throttle (see Throttle). A hash of an old bcrypt cost is replaced by one of today's."""
        try:
            async with self._throttle.password_check(email) as verdict:
                account = await find()
                ok = await self._hasher.verify(password, account.password_hash if account else None)
                verdict.failed = not ok
        except RateLimited:
            if outcomes is not None:
                outcomes.labels("throttled").inc()
            raise
        if not ok or account is None:
            if outcomes is not None:
                outcomes.labels("failure").inc()
            raise InvalidCredentials(wrong)
        if self._hasher.outdated(account.password_hash):
            await self._accounts.rehash(account, await self._hasher.hash(password))
        return account

    def now(self) -> float:
        """This process's time, as tokens are checked against it."""
        return self._clock()

    async def end_sessions(
        self,
        user_id: str,
        reason: str,
        *,
        only: str | None = None,
        keep: str = "",
    ) -> int:
        """End one session of the user (`only`) or all but `keep`; returns how many ended."""
        ended = await self._sessions.revoke(user_id, reason, only=only, keep=keep)
        for session_id in ended:
            self._gate.revoked(session_id, reason)
        self._metrics.logouts.labels(reason).inc(len(ended))
        log.info(
            "sessions ended", extra={"user_id": user_id, "reason": reason, "count": len(ended)}
        )
        return len(ended)

    async def _tokens(
        self,
        user_id: str,
        session_id: str,
        generation: int,
        *,
        now: float,
        created_at: float,
        last_used_at: float,
    ) -> TokenSet:
        """Tokens for a session; `now` and the session's times are Redis's."""
        expires_at = self._policy.expires_at(last_used_at, created_at)
        # The access token's iat is this process's time, and it ends with the session at
        # the latest: what is left of the session is measured in Redis's time.
        local = self._clock()
        access, expires_in = await self._access.issue(
            user_id, session_id, local, local + expires_at - now
        )
        return TokenSet(
            access_token=access,
            expires_in=expires_in,
            refresh_token=self._refresh.issue(user_id, session_id, generation),
            refresh_expires_in=max(0, round(expires_at - now)),
            session_id=session_id,
        )

    def _info(self, row: SessionRow, current: str) -> SessionInfo:
        created, used = row.created_ms / 1000, row.last_used_ms / 1000
        return SessionInfo(
            session_id=row.session_id,
            created_at=created,
            last_used_at=used,
            expires_at=self._policy.expires_at(used, created),
            user_agent=row.user_agent or None,
            ip=row.ip or None,
            current=row.session_id == current,
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
