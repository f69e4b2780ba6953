"""Access tokens (JWT, `typ: at+jwt`) and refresh tokens (opaque, MACed, rotating)."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import re
import secrets
from collections import OrderedDict
from typing import Any, NamedTuple

import jwt
import msgspec

from authsvc.domain.errors import InvalidGrant, InvalidToken
from authsvc.domain.keys import KeyRing
from authsvc.domain.signing import BatchSigner, jws_signer

MAX_ACCESS_TOKEN_LENGTH = 4096
MAX_REFRESH_TOKEN_LENGTH = 256
TOKEN_CACHE_SIZE = 100_000  # default of AUTHSVC_TOKEN_CACHE_SIZE
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "sid", "iat", "exp", "jti"]
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# <user>.<session>.<generation>.<mac>: the body (group 1) and its parts, and the MAC (URL-safe
# base64 like the ids: compare_digest refuses non-ASCII text with a TypeError).
_REFRESH_TOKEN = re.compile(
    r"(([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})\.(0|[1-9][0-9]{0,11}))\.([A-Za-z0-9_-]{1,64})"
)


def new_id() -> str:
    """A random 128-bit identifier, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def is_id(text: str) -> bool:
    """Could `text` be an id that `new_id` made?"""
    return _ID.fullmatch(text) is not None


@dataclasses.dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: str
    session_id: str
    expires_at: int
    issued_at: int
    token_id: str


class TokenExpired(InvalidToken):
    """An authentic access token past its `exp`: its claims say which session it was of."""

    def __init__(self, claims: AccessClaims) -> None:
        super().__init__("token expired")
        self.claims = claims


class AccessTokens:
    """Issue and verify access tokens with a key ring."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        cache_size: int = TOKEN_CACHE_SIZE,
    ) -> None:
        self._keys = keys
        self.issuer = self._issuer = issuer
        self.audience = self._audience = audience
        self._ttl = ttl
        # Signing, the JWS way but without PyJWT's generic per-call work: the header segment
        # is the same for every token of a key, and msgspec encodes the claims.
        signing = keys.signing
        header = {"alg": signing.alg, "kid": signing.kid, "typ": "at+jwt"}
        self._header_segment = _b64(_json(header)) + b"."
        self._sign = BatchSigner(jws_signer(signing.alg, signing.signer))
        # Tokens whose signature and claims were checked, least recently used first; only
        # expiry is re-checked. Sized for the working set: a miss costs a signature check.
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()
        self._cache_size = cache_size

    async def issue(
        self, user_id: str, session_id: str, now: float, session_expires_at: float
    ) -> tuple[str, int]:
        """A token for the session and its lifetime in seconds: the TTL, or what is left of
        the session if that is shorter."""
        iat = int(now)
        exp = min(iat + self._ttl, int(session_expires_at))
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "sid": session_id,
            "iat": iat,
            "exp": exp,
            "jti": new_id(),
        }
        signing_input = self._header_segment + _b64(_json(claims))
        signature = await self._sign(signing_input)  # signed in a batch: see signing.py
        return f"{signing_input.decode()}.{_b64(signature).decode()}", exp - iat

    def verify(self, token: str, now: float) -> AccessClaims:
        """The claims of a valid token; InvalidToken otherwise."""
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token, now)
            if len(self._verified) >= self._cache_size:
                self._verified.popitem(last=False)
            self._verified[token] = claims
        else:
            self._verified.move_to_end(token)
        if now >= claims.expires_at:
            raise TokenExpired(claims)
        return claims

    def _decode(self, token: str, now: float) -> AccessClaims:
        if len(token) > MAX_ACCESS_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        if "=" in token:  # JWS compact form is unpadded; PyJWT would accept padding
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        key = self._keys.by_kid.get(header.get("kid"))  # type: ignore[arg-type]
        if key is None or header.get("alg") != key.alg or header.get("typ") != "at+jwt":
            raise InvalidToken("token not issued here")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key.verifier,
                algorithms=[key.alg],
                audience=self._audience,
                issuer=self._issuer,
                # Time is checked below against the injectable clock.
                options={"require": _REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            raise InvalidToken("invalid token") from None
        sub, sid, iat, exp, jti = (payload[c] for c in ("sub", "sid", "iat", "exp", "jti"))
        if not (isinstance(sub, str) and isinstance(sid, str) and _ID.fullmatch(sid)):
            raise InvalidToken("invalid token")
        if not (_is_int(iat) and _is_int(exp) and isinstance(jti, str)) or exp - iat > self._ttl:
            raise InvalidToken("invalid token lifetime")
        if iat > now + 60:
            raise InvalidToken("token issued in the future")
        return AccessClaims(sub, sid, exp, iat, jti)


class RefreshClaims(NamedTuple):
    """What a refresh token names: a session and a generation of its token chain (a
    tuple, like every record made on each refresh: a frozen dataclass costs several times
    as much to build)."""

    user_id: str
    session_id: str
    generation: int


class RefreshTokens:
    """Refresh tokens `<user>.<session>.<generation>.<mac>`.

    The MAC key comes from the key ring, never from Redis, so a token is checked before
    storage is touched (a forged one cannot revoke anything) and a successor is re-derived,
    not stored: retries within the grace window get the very same string."""

    def __init__(self, keys: KeyRing) -> None:
        self._mac_keys = [k.mac_key for k in keys.keys]

    def issue(self, user_id: str, session_id: str, generation: int) -> str:
        """The token for one generation of a session."""
        body = f"{user_id}.{session_id}.{generation}"
        return f"{body}.{_mac(self._mac_keys[0], body)}"

    def parse(self, token: str) -> RefreshClaims:
        """The claims of an authentic token; InvalidGrant otherwise."""
        if len(token) > MAX_REFRESH_TOKEN_LENGTH:
            raise InvalidGrant("malformed refresh token")
        match = _REFRESH_TOKEN.fullmatch(token)
        if match is None:
            raise InvalidGrant("malformed refresh token")
        body, user_id, session_id, generation, mac = match.groups()
        for key in self._mac_keys:
            if hmac.compare_digest(_mac(key, body), mac):
                return RefreshClaims(user_id, session_id, int(generation))
        raise InvalidGrant("invalid refresh token")


_json = msgspec.json.Encoder().encode


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _mac(key: bytes, body: str) -> str:
    digest = hmac.digest(key, body.encode(), "sha256")[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
