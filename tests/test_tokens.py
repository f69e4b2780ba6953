"""Access and refresh tokens, for every supported key type."""

from __future__ import annotations

import asyncio

import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from authsvc.domain.errors import InvalidGrant, InvalidToken
from authsvc.domain.keys import KeyRing, generate_jwks
from authsvc.domain.signing import BatchSigner
from authsvc.domain.tokens import AccessTokens, RefreshTokens

NOW = 1_800_000_000.0


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
async def test_access_tokens_of_every_algorithm_verify_here_and_with_jwks_elsewhere(
    alg: str,
) -> None:
    ring = KeyRing.from_jwks(generate_jwks(alg))
    tokens = AccessTokens(ring, issuer="authsvc", audience="api", ttl=900)
    token, expires_in = await tokens.issue("user", "session", NOW, NOW + 10_000)
    assert expires_in == 900
    claims = tokens.verify(token, NOW + 1)
    assert (claims.user_id, claims.session_id, claims.expires_at) == ("user", "session", NOW + 900)
    public = ring.public_jwks()
    if alg == "EdDSA":  # joserfc refuses the polymorphic name (RFC 9864); PyJWT still reads it
        header = jwt.get_unverified_header(token)
        payload = jwt.decode(
            token,
            jwt.PyJWK(public["keys"][0]),
            algorithms=[alg],
            audience="api",
            options={"verify_exp": False, "verify_iat": False},
        )
    else:
        keys = KeySet.import_key_set(public)  # type: ignore[arg-type]
        decoded = jose_jwt.decode(token, keys, algorithms=[alg])
        header, payload = decoded.header, decoded.claims
    assert header == {"alg": alg, "kid": ring.signing.kid, "typ": "at+jwt"}
    assert payload["aud"] == "api"
    with pytest.raises(InvalidToken):
        tokens.verify(token, NOW + 900)


async def test_access_token_of_another_key_ring_is_refused() -> None:
    mine = AccessTokens(KeyRing.from_jwks(generate_jwks()), issuer="a", audience="a", ttl=60)
    theirs = AccessTokens(KeyRing.from_jwks(generate_jwks()), issuer="a", audience="a", ttl=60)
    token, _ = await theirs.issue("user", "session", NOW, NOW + 60)
    with pytest.raises(InvalidToken):
        mine.verify(token, NOW)


def test_refresh_tokens_are_deterministic_per_generation_and_bound_to_the_key() -> None:
    ring = KeyRing.from_jwks(generate_jwks())
    refresh = RefreshTokens(ring)
    token = refresh.issue("user", "session", 3)
    assert refresh.issue("user", "session", 3) == token
    assert refresh.issue("user", "session", 4) != token
    claims = refresh.parse(token)
    assert (claims.user_id, claims.session_id, claims.generation) == ("user", "session", 3)
    with pytest.raises(InvalidGrant):
        RefreshTokens(KeyRing.from_jwks(generate_jwks())).parse(token)
    rotated = RefreshTokens(KeyRing(KeyRing.from_jwks(generate_jwks()).keys + ring.keys))
    assert rotated.parse(token) == claims


async def test_the_verified_token_cache_keeps_the_most_recently_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = AccessTokens(
        KeyRing.from_jwks(generate_jwks()), issuer="a", audience="a", ttl=60, cache_size=2
    )
    a, b, c = [(await tokens.issue("uid", sid, NOW, NOW + 3600))[0] for sid in ("sa", "sb", "sc")]
    checked: list[str] = []
    check = tokens._decode

    def counting(token: str, now: float) -> object:
        checked.append(token)
        return check(token, now)

    monkeypatch.setattr(tokens, "_decode", counting)
    for token in (a, b, a, c, a, b):
        tokens.verify(token, NOW)
    # b was the least recently used when c came in; a stayed throughout.
    assert checked == [a, b, c, b]


async def test_signatures_asked_for_together_are_made_together_each_its_own() -> None:
    events: list[tuple[str, bytes]] = []

    def sign(data: bytes) -> bytes:
        events.append(("sign", data))
        if data == b"bad":
            raise ValueError("refused")
        return b"sig-" + data

    signer = BatchSigner(sign)

    async def ask(data: bytes) -> bytes:
        events.append(("ask", data))
        return await signer(data)

    asked = [b"0", b"1", b"bad", b"3"]
    results = await asyncio.gather(*(ask(d) for d in asked), return_exceptions=True)
    assert results[:2] == [b"sig-0", b"sig-1"]
    assert results[3] == b"sig-3"
    assert isinstance(results[2], ValueError)  # only that caller's
    assert [kind for kind, _ in events] == ["ask"] * 4 + ["sign"] * 4  # one batch
    assert await signer(b"alone") == b"sig-alone"  # a lone request is not kept waiting
