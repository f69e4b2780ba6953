"""What resource servers and gateways ask of a token: is it active (RFC 7662), and end its
session (RFC 7009). Introspection changes nothing: no rotation, no last use, no reuse check."""

from __future__ import annotations

from typing import Any

from authsvc.domain.errors import InvalidGrant, InvalidToken
from authsvc.domain.gate import SessionGate
from authsvc.domain.service import AuthService, Policy
from authsvc.domain.tokens import AccessTokens, RefreshTokens
from authsvc.store.sessions import Ended, SessionStore

INACTIVE: dict[str, Any] = {"active": False}


class TokenInspector:
    """Introspection and revocation of access and refresh tokens."""

    def __init__(
        self,
        *,
        service: AuthService,
        access: AccessTokens,
        refresh: RefreshTokens,
        sessions: SessionStore,
        gate: SessionGate,
        policy: Policy,
    ) -> None:
        self._service = service
        self._access = access
        self._refresh = refresh
        self._sessions = sessions
        self._gate = gate
        self._policy = policy

    async def introspect(self, token: str) -> dict[str, Any]:
        """The RFC 7662 answer for `token`, whatever it is."""
        if _looks_like_refresh_token(token):
            return await self._introspect_refresh(token)
        try:
            claims = self._access.verify(token, self._service.now())
            await self._gate.admit(claims.user_id, claims.session_id)
        except InvalidToken:
            return INACTIVE
        return {
            "active": True,
            "token_type": "access_token",
            "sub": claims.user_id,
            "sid": claims.session_id,
            "iss": self._access.issuer,
            "aud": self._access.audience,
            "exp": claims.expires_at,
            "iat": claims.issued_at,
            "jti": claims.token_id,
        }

    async def revoke(self, token: str) -> None:
        """End the session of a refresh or access token; nothing for any other token."""
        try:
            if _looks_like_refresh_token(token):
                claims = self._refresh.parse(token)
                user_id, session_id = claims.user_id, claims.session_id
            else:
                access = self._access.verify(token, self._service.now())
                user_id, session_id = access.user_id, access.session_id
        except (InvalidGrant, InvalidToken):
            return
        await self._service.end_sessions(user_id, "logout", only=session_id)

    async def _introspect_refresh(self, token: str) -> dict[str, Any]:
        try:
            claims = self._refresh.parse(token)
        except InvalidGrant:
            return INACTIVE
        live = await self._sessions.probe(claims.user_id, claims.session_id)
        if isinstance(live, Ended):
            return INACTIVE
        current = claims.generation == live.generation
        in_grace = (
            claims.generation == live.generation - 1
            and live.now_ms - live.last_used_ms <= self._policy.refresh_grace * 1000
        )
        if not (current or in_grace):  # refresh would call it reuse
            return INACTIVE
        used = live.last_used_ms / 1000
        expires = self._policy.expires_at(used, live.created_ms / 1000)
        if in_grace:  # the old token is accepted only until the grace window closes
            expires = min(expires, used + self._policy.refresh_grace)
        return {
            "active": True,
            "token_type": "refresh_token",
            "sub": claims.user_id,
            "sid": claims.session_id,
            "exp": int(expires),
        }


def _looks_like_refresh_token(token: str) -> bool:
    # <user>.<session>.<generation>.<mac>; a JWS has three parts.
    return token.count(".") == 3
