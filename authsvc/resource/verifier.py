"""The Verifier: local JWT checks, one introspection per session, revocations streamed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import quote_plus

import aiohttp
import jwt

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
CACHE_SIZE = 100_000  # verified tokens, live sessions and ended sessions, each
_REQUIRED = ["iss", "aud", "sub", "sid", "iat", "exp", "jti"]
_ALGORITHMS = {"ES256", "EdDSA", "RS256"}


class InvalidToken(Exception):
    """The token is not a valid access token of a live session."""


class Unavailable(Exception):
    """authsvc cannot be asked and the revocation stream is down: whether the session is
    live cannot be known now (answer 503)."""


class Principal(NamedTuple):
    """The caller behind a valid access token."""

    user_id: str
    session_id: str
    claims: Mapping[str, Any]


class Verifier:
    """Verifies authsvc's access tokens for one API backend (see the package docstring).

    `client_id` and `client_secret` are a service client of authsvc with the scopes
    `introspect` and `revocations` (`authsvc clients add NAME --scope introspect --scope
    revocations --file clients.json`)."""

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        client_secret: str,
        audience: str = "authsvc",
        issuer: str = "authsvc",
        leeway: float = 5.0,
        jwks_refetch_every: float = 5.0,
        stream_silence: float = 2.5,
        timeout: float = 2.0,
    ) -> None:
        self._base = base_url.rstrip("/")
        # client_secret_basic (RFC 6749 2.3.1): each part form-urlencoded, then Base64.
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
        self._auth = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._refetch_every = jwks_refetch_every  # at most one JWKS fetch this often
        # A stream quiet this long is dead (authsvc sends a heartbeat every second).
        self._silence = stream_silence
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None
        self._keys: dict[str, tuple[str, Any]] = {}  # kid -> (alg, public key)
        self._fetched_at = -float("inf")
        self._fetching: asyncio.Task[None] | None = None
        self._verified: dict[str, Principal] = {}  # token -> its principal (signature checked)
        self._live: dict[str, None] = {}  # sessions introspected since the stream's `ready`
        self._ended: dict[str, None] = {}  # sessions known to have ended
        # Introspections in flight, by session, with the stream epoch they were sent in.
        self._asking: dict[str, tuple[asyncio.Future[bool], int]] = {}
        self._keys_failed = True  # until a JWKS fetch succeeds
        self._epoch = 0  # counts stream connections: what `_live` was learnt under
        self._streaming = False  # True from `ready` until the stream is lost
        self._stream: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Verifier:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self, *, wait: float = 5.0) -> None:
        """Fetch the JWKS and open the revocation stream (waiting up to `wait` seconds for
        it; until it is up every session is introspected)."""
        self._http = aiohttp.ClientSession()
        with contextlib.suppress(Unavailable):
            await self._fetch_keys()
        self._stream = asyncio.create_task(self._follow(), name="authsvc.resource.stream")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._ready.wait()

    async def close(self) -> None:
        """Stop the stream and close connections."""
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream
        if self._http is not None:
            await self._http.close()

    @property
    def streaming(self) -> bool:
        """True while revocations are being heard."""
        return self._streaming

    async def verify(self, token: str) -> Principal:
        """The principal of a valid access token of a live session; InvalidToken for any bad
        token, Unavailable when that cannot be known now."""
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._check_signature(token)
            _remember(self._verified, token, principal)
        if time.time() >= principal.claims["exp"] + self._leeway:
            raise InvalidToken("token expired")
        sid = principal.session_id
        if sid in self._ended:
            raise InvalidToken("session ended")
        if self._streaming and sid in self._live:
            return principal
        active, epoch = await self._ask(sid, token)
        if not active:
            _remember(self._ended, sid, None)
            raise InvalidToken("session ended")
        if sid in self._ended:  # ended while the introspection was in flight
            raise InvalidToken("session ended")
        if self._streaming and self._epoch == epoch:  # nothing may have been missed since
            _remember(self._live, sid, None)
        return principal

    async def _check_signature(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_LENGTH or "=" in token:
            raise InvalidToken("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        if header.get("typ") != "at+jwt" or set(header) - {"alg", "kid", "typ"}:
            raise InvalidToken("not an access token")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("no key id")
        if kid not in self._keys:  # a new signing key, perhaps
            await self._fetch_keys(rate_limited=True)
        if kid not in self._keys:
            if self._keys_failed:  # perhaps a key of authsvc's that could not be fetched
                raise Unavailable("authsvc's keys cannot be fetched")
            raise InvalidToken("unknown key")
        alg, key = self._keys[kid]
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": _REQUIRED},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        sub, sid = claims["sub"], claims["sid"]
        if not (isinstance(sub, str) and isinstance(sid, str)):
            raise InvalidToken("invalid token")
        return Principal(sub, sid, claims)

    async def _fetch_keys(self, *, rate_limited: bool = False) -> None:
        """Fetch the JWKS; concurrent callers share one fetch."""
        if rate_limited and time.monotonic() - self._fetched_at < self._refetch_every:
            if self._fetching is not None and not self._fetching.done():
                await asyncio.shield(self._fetching)  # a fetch under way may bring the key
            return
        if self._fetching is None or self._fetching.done():
            self._fetched_at = time.monotonic()
            self._fetching = asyncio.ensure_future(self._load_keys())
        await asyncio.shield(self._fetching)

    async def _load_keys(self) -> None:
        try:
            async with self._session().get(
                f"{self._base}/.well-known/jwks.json", timeout=self._timeout
            ) as response:
                response.raise_for_status()
                document = await response.json()
            entries = document["keys"]
            if not isinstance(entries, list):
                raise TypeError("keys is not a list")
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.warning("JWKS fetch failed: %r", exc)
            self._keys_failed = True
            raise Unavailable("authsvc's keys cannot be fetched") from None
        self._keys_failed = False
        keys = {}
        for jwk in entries:
            if not isinstance(jwk, dict):
                continue
            alg = jwk.get("alg")
            if alg not in _ALGORITHMS or not isinstance(jwk.get("kid"), str):
                continue
            with contextlib.suppress(jwt.PyJWKError, jwt.InvalidKeyError, ValueError):
                keys[jwk["kid"]] = (alg, jwt.PyJWK(jwk, algorithm=alg).key)
        self._keys = keys

    async def _ask(self, sid: str, token: str) -> tuple[bool, int]:
        """Is the session live, and the stream epoch the question was sent in? One
        introspection at a time per session: a burst of requests of a session just seen
        waits for the same answer (and gets the epoch of when it was asked)."""
        if sid not in self._asking:
            sent: asyncio.Future[bool] = asyncio.ensure_future(self._introspect(token))
            self._asking[sid] = (sent, self._epoch)
            sent.add_done_callback(lambda _: self._asking.pop(sid, None))
        asking, epoch = self._asking[sid]
        return await asyncio.shield(asking), epoch

    async def _introspect(self, token: str) -> bool:
        try:
            async with self._session().post(
                f"{self._base}/v1/auth/introspect",
                data={"token": token, "token_type_hint": "access_token"},
                headers=self._auth,
                timeout=self._timeout,
            ) as response:
                if response.status != 200:
                    raise Unavailable(f"introspection answered {response.status}")
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"introspection failed: {exc!r}") from None
        if not isinstance(answer, dict):
            raise Unavailable("introspection answered something else")
        return answer.get("active") is True

    async def _follow(self) -> None:
        """Read the revocation stream, reconnecting after any failure, until cancelled."""
        delay = 0.05
        while True:
            try:
                await self._read_stream()
                delay = 0.05
            except (aiohttp.ClientError, TimeoutError, ValueError, Unavailable) as exc:
                log.warning("revocation stream lost: %r", exc)
            finally:
                self._streaming = False  # whatever it taught is stale from here on
                self._live.clear()
                self._epoch += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _read_stream(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=self._silence)
        async with self._session().get(
            f"{self._base}/v1/revocations", headers=self._auth, timeout=timeout
        ) as response:
            if response.status != 200:
                raise Unavailable(f"the revocation stream answered {response.status}")
            event = ""
            async for raw in response.content:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "revoked":
                    self._ended_now(json.loads(line[5:]))
                elif line.startswith("data:") and event == "ready":
                    self._epoch += 1
                    self._live.clear()
                    self._streaming = True
                    self._ready.set()
                elif not line:
                    event = ""

    def _ended_now(self, data: Any) -> None:
        sid = data.get("sid") if isinstance(data, dict) else None
        if isinstance(sid, str):
            self._live.pop(sid, None)
            _remember(self._ended, sid, None)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("start the Verifier first (async with Verifier(...))")
        return self._http


def _remember(cache: dict[str, Any], key: str, value: Any) -> None:
    """Add to a bounded cache, dropping the oldest entry when full."""
    if len(cache) >= CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value
