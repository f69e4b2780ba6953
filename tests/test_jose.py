"""Bearer tokens that RFC 8725 (JSON Web Token Best Current Practices) warns about are refused.

Every hostile token here is minted by hand from a valid one, so that exactly one aspect of it
is wrong: the header and claims are those of a real session, and the signature is made with
the service's real signing key unless the attack is about the key or the signature itself.
The positive control shows that such a hand-minted token, with nothing wrong, is accepted.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm
from multidict import CIMultiDict

from authsvc.domain.keys import KeyRing
from tests.helpers import Client, login, signup

Signer = Callable[[bytes], bytes]
ATTACKER_KID = "attacker-key"


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def es256_signer(private_key: ec.EllipticCurvePrivateKey) -> Signer:
    """ES256 with `private_key`: the JWS signature is r || s, 32 bytes each (RFC 7518 §3.4)."""

    def sign(signing_input: bytes) -> bytes:
        r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign


def hs256_signer(secret: bytes) -> Signer:
    """HS256 with `secret`."""
    return lambda signing_input: hmac.digest(secret, signing_input, hashlib.sha256)


def mint(header: dict[str, Any], claims: dict[str, Any], sign: Signer | None) -> str:
    """A compact JWS; with no signer, the signature segment is empty."""
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    ).encode()
    signature = b"" if sign is None else sign(signing_input)
    return signing_input.decode() + "." + b64url(signature)


class Victim:
    """A user with a live session, and what a valid access token for it looks like."""

    def __init__(self, keyring: KeyRing, user_id: str, tokens: dict[str, Any]) -> None:
        self.keyring = keyring
        self.user_id = user_id
        self.session_id: str = tokens["session_id"]
        self.access_token: str = tokens["access_token"]
        self.real_key: Signer = es256_signer(keyring.signing.signer)

    def header(self, **changes: Any) -> dict[str, Any]:
        """A valid header with some members changed; a member set to None is left out."""
        signing = self.keyring.signing
        header = {"alg": signing.alg, "typ": "at+jwt", "kid": signing.kid, **changes}
        return {name: value for name, value in header.items() if value is not None}

    def claims(self, **changes: Any) -> dict[str, Any]:
        """Valid claims (by the real time, not the test clock) with some members changed."""
        now = int(time.time())
        claims = {
            "iss": "authsvc",
            "aud": "authsvc",
            "sub": self.user_id,
            "sid": self.session_id,
            "iat": now,
            "exp": now + 600,
            "jti": "hand-minted",
            **changes,
        }
        return claims

    def token(self, sign: Signer | None = None, /, **header_changes: Any) -> str:
        """Valid claims under a (changed) header, signed with the real key by default."""
        return mint(self.header(**header_changes), self.claims(), sign or self.real_key)


@pytest.fixture
async def victim(client: Client, keyring: KeyRing) -> Victim:
    user_id = await signup(client, "jose@example.com")
    return Victim(keyring, user_id, await login(client, "jose@example.com"))


@pytest.fixture
def attacker_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def attacker_jwk(key: ec.EllipticCurvePrivateKey, kid: str | None = ATTACKER_KID) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update(alg="ES256", use="sig")
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authsvc")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


async def assert_refused(client: Client, *authorization: str) -> None:
    """GET /v1/me with these Authorization header values is 401 invalid_token."""
    headers = CIMultiDict(("Authorization", value) for value in authorization)
    response = await client.get("/v1/me", headers=headers)
    body = await response.json()
    assert (response.status, body.get("error")) == (401, "invalid_token"), body
    challenge = response.headers.get("WWW-Authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    assert 'error="invalid_token"' in challenge, challenge


async def test_hand_minted_token_with_nothing_wrong_is_accepted(
    client: Client, victim: Victim
) -> None:
    response = await client.get("/v1/me", headers={"Authorization": f"Bearer {victim.token()}"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["user_id"], body["session_id"]) == (victim.user_id, victim.session_id)


async def test_all_zero_ecdsa_signature_is_refused(client: Client, victim: Victim) -> None:
    token = victim.token(lambda _: bytes(64))
    assert token.endswith("." + "A" * 86)
    await assert_refused(client, f"Bearer {token}")


@pytest.mark.parametrize("kid", ["real", "attacker", "absent"])
@pytest.mark.parametrize("member", ["jwk", "x5c"])
async def test_key_embedded_in_the_header_is_not_trusted(
    client: Client,
    victim: Victim,
    attacker_key: ec.EllipticCurvePrivateKey,
    member: str,
    kid: str,
) -> None:
    """RFC 8725 §3.10: a key the token brings along says nothing about who signed it."""
    kid_value = {"real": victim.keyring.signing.kid, "attacker": ATTACKER_KID, "absent": None}[kid]
    embedded: Any
    if member == "jwk":
        embedded = attacker_jwk(attacker_key, kid_value)
    else:
        der = self_signed_certificate(attacker_key).public_bytes(serialization.Encoding.DER)
        embedded = [base64.b64encode(der).decode()]
    token = victim.token(es256_signer(attacker_key), kid=kid_value, **{member: embedded})
    await assert_refused(client, f"Bearer {token}")


@pytest.mark.parametrize("kid", ["real", "attacker"])
@pytest.mark.parametrize("member", ["jku", "x5u"])
async def test_key_url_in_the_header_is_never_fetched(
    client: Client,
    victim: Victim,
    attacker_key: ec.EllipticCurvePrivateKey,
    member: str,
    kid: str,
) -> None:
    """RFC 8725 §3.10: `jku`/`x5u` are not followed (no SSRF, no attacker-chosen keys)."""
    fetched: list[str] = []
    certificate = self_signed_certificate(attacker_key).public_bytes(serialization.Encoding.PEM)

    async def serve_attacker_key(request: web.Request) -> web.Response:
        fetched.append(request.path_qs)
        if request.path.endswith(".json"):
            return web.json_response({"keys": [attacker_jwk(attacker_key)]})
        return web.Response(body=certificate, content_type="application/pem-certificate-chain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", serve_attacker_key)
    async with TestServer(app, host="127.0.0.1") as attacker_server:
        path = "/jwks.json" if member == "jku" else "/cert.pem"
        url = str(attacker_server.make_url(path))
        assert url.startswith("http://127.0.0.1:")
        kid_value = victim.keyring.signing.kid if kid == "real" else ATTACKER_KID
        token = victim.token(es256_signer(attacker_key), kid=kid_value, **{member: url})
        await assert_refused(client, f"Bearer {token}")
        await asyncio.sleep(0.1)  # a fetch made in the background would have arrived by now
    assert fetched == []


@pytest.mark.parametrize("signer", ["hmac-empty-key", "real-key"])
@pytest.mark.parametrize(
    "kid", ["../../../../dev/null", "' OR 1=1 --", "", 123, ["x"], {"kid": "x"}, None]
)
async def test_kid_that_names_no_key_is_refused(
    client: Client, victim: Victim, kid: Any, signer: str
) -> None:
    """RFC 8725 §3.10: `kid` is only ever looked up among the service's own keys."""
    if signer == "hmac-empty-key":
        token = victim.token(hs256_signer(b""), alg="HS256", kid=kid)
    else:
        token = victim.token(victim.real_key, kid=kid)
    await assert_refused(client, f"Bearer {token}")


async def test_unknown_critical_header_parameter_is_refused(client: Client, victim: Victim) -> None:
    """RFC 7515 §4.1.11: a `crit` extension the recipient does not understand makes the
    token invalid, even when signed with the real key."""
    token = victim.token(crit=["exp-ext"], **{"exp-ext": 1})
    await assert_refused(client, f"Bearer {token}")


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": "9999999999"},
        {"exp": True},
        {"iat": True},
        {"exp": True, "iat": True},
        {"iat": str(int(time.time()))},
        {"exp": None},
        {"iat": None},
    ],
    ids=repr,
)
async def test_time_claims_that_are_not_numeric_dates_are_refused(
    client: Client, victim: Victim, changes: dict[str, Any]
) -> None:
    """RFC 7519 §2: `exp` and `iat` are NumericDates (JSON numbers), not strings or booleans."""
    token = mint(victim.header(), victim.claims(**changes), victim.real_key)
    await assert_refused(client, f"Bearer {token}")


@pytest.mark.parametrize("suffix", [".x", ".", "..", ".AAAA"])
async def test_extra_segment_after_the_signature_is_refused(
    client: Client, victim: Victim, suffix: str
) -> None:
    await assert_refused(client, f"Bearer {victim.access_token}{suffix}")


@pytest.mark.parametrize("suffix", ["A", "AA", "AAA", "AAAA", "x", "_-"])
async def test_extra_base64url_characters_after_the_signature_are_refused(
    client: Client, victim: Victim, suffix: str
) -> None:
    await assert_refused(client, f"Bearer {victim.access_token}{suffix}")


async def test_padded_signature_segment_is_refused(client: Client, victim: Victim) -> None:
    """RFC 7515 §2 and §7.1: the compact serialization is base64url with no '=' padding, so
    `<token>==` is not the token that was issued."""
    assert len(victim.access_token.rsplit(".", 1)[1]) % 4 == 2
    await assert_refused(client, f"Bearer {victim.access_token}==")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_unsigned_token_is_refused(client: Client, victim: Victim, alg: str) -> None:
    """RFC 8725 §3.1 and §3.2: `alg: none` is never accepted."""
    unsigned = mint(victim.header(alg=alg), victim.claims(), None)
    assert unsigned.endswith(".")
    await assert_refused(client, f"Bearer {unsigned}")
    # The same, keeping the real ES256 signature of the very same header and claims.
    signing_input = unsigned.rstrip(".")
    signature = b64url(victim.real_key(signing_input.encode()))
    await assert_refused(client, f"Bearer {signing_input}.{signature}")


@pytest.mark.parametrize("encoding", ["pem", "der", "x962-point", "jwk-json"])
async def test_hs256_with_the_public_key_as_secret_is_refused(
    client: Client, victim: Victim, encoding: str
) -> None:
    """RFC 8725 §2.1 and §3.1: algorithm confusion, HMAC keyed with the public key."""
    public = victim.keyring.signing.signer.public_key()
    secret: bytes
    if encoding == "pem":
        secret = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif encoding == "der":
        secret = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif encoding == "x962-point":
        secret = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        secret = json.dumps(victim.keyring.public_jwks()["keys"][0]).encode()
    await assert_refused(client, f"Bearer {victim.token(hs256_signer(secret), alg='HS256')}")


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(
    client: Client, victim: Victim, scheme: str
) -> None:
    """RFC 6750 §2.1 and RFC 9110 §11.1: the auth-scheme is case-insensitive."""
    response = await client.get(
        "/v1/me", headers={"Authorization": f"{scheme} {victim.access_token}"}
    )
    assert response.status == 200, await response.text()
    assert (await response.json())["session_id"] == victim.session_id


@pytest.mark.parametrize("valid_first", [True, False], ids=["valid-first", "junk-first"])
async def test_two_authorization_headers_are_refused(
    client: Client, victim: Victim, valid_first: bool
) -> None:
    """RFC 9110 §5.3: Authorization is a singleton field; two of them are ambiguous, and a
    proxy and the service may each pick a different one."""
    values = [f"Bearer {victim.access_token}", "Bearer junk"]
    if not valid_first:
        values.reverse()
    await assert_refused(client, *values)


async def test_two_authorization_headers_with_the_same_valid_token_are_refused(
    client: Client, victim: Victim
) -> None:
    await assert_refused(client, *[f"Bearer {victim.access_token}"] * 2)
