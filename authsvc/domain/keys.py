"""Signing keys: a JWK Set (first key signs, all verify) or one HS256 secret.

Each key also yields, through HKDF, the key that MACs refresh tokens, so nothing in Redis
can mint or verify a token."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ALGORITHMS = ("ES256", "EdDSA", "RS256")
_MAC_INFO = b"authsvc refresh-token mac v1"
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}


class KeySetError(ValueError):
    """A key file or secret cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True, repr=False)
class SigningKey:
    """One key: its id, algorithm, signing and verifying halves, and derived MAC key."""

    kid: str
    alg: str
    signer: Any
    verifier: Any
    mac_key: bytes
    public_jwk: dict[str, Any] | None

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"


class KeyRing:
    """The keys in use; `keys[0]` signs."""

    def __init__(self, keys: list[SigningKey]) -> None:
        if not keys:
            raise KeySetError("the key set is empty")
        self.keys = keys
        self.by_kid = {k.kid: k for k in keys}
        if len(self.by_kid) != len(keys):
            raise KeySetError("two keys share a kid")

    @property
    def signing(self) -> SigningKey:
        """The key that signs new tokens."""
        return self.keys[0]

    def public_jwks(self) -> dict[str, Any]:
        """The public JWK Set (empty for HS256)."""
        return {"keys": [k.public_jwk for k in self.keys if k.public_jwk is not None]}

    @classmethod
    def from_secret(cls, secret: str) -> KeyRing:
        """HS256 with a shared secret."""
        raw = secret.encode()
        kid = "hs-" + hashlib.sha256(b"kid:" + raw).hexdigest()[:16]
        return cls([SigningKey(kid, "HS256", raw, raw, _derive_mac_key(raw), None)])

    @classmethod
    def from_jwks(cls, jwks: dict[str, Any]) -> KeyRing:
        """Private keys from a JWK Set document."""
        entries = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(entries, list) or not entries:
            raise KeySetError('expected a JWK Set: {"keys": [...]} with at least one key')
        return cls([_load_private_jwk(entry) for entry in entries])

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Private keys from a JWK Set file."""
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KeySetError(f"{path}: {exc}") from None
        return cls.from_jwks(document)


def generate_jwks(alg: str = "ES256") -> dict[str, Any]:
    """A new private JWK Set with one key of `alg`."""
    private: Any
    if alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(private, as_dict=True)
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private, as_dict=True)
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        jwk = RSAAlgorithm.to_jwk(private, as_dict=True)
    else:
        raise KeySetError(f"unknown algorithm {alg!r}; expected one of {', '.join(ALGORITHMS)}")
    jwk.update(kid=_thumbprint(jwk), alg=alg, use="sig")
    return {"keys": [jwk]}


def write_private_jwks(path: Path, jwks: dict[str, Any], *, exclusive: bool = False) -> bool:
    """Write a key set with mode 0600, atomically. With `exclusive`, an existing file wins
    and False is returned (several workers may race to create the same file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".jwks-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(jwks, out, indent=2)
            out.write("\n")
        os.chmod(tmp, 0o600)
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = ""
    finally:
        if tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return True


def data_dir_keyring(data_dir: Path) -> KeyRing:
    """The host's generated key set in `data_dir`, created on first use."""
    path = data_dir / "jwks.json"
    if not path.exists():
        write_private_jwks(path, generate_jwks(), exclusive=True)
    return KeyRing.from_file(path)


def _load_private_jwk(jwk: Any) -> SigningKey:
    if not isinstance(jwk, dict):
        raise KeySetError("every key must be a JSON object")
    try:
        loaded = jwt.PyJWK(jwk)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise KeySetError(f"key {jwk.get('kid', '?')!r}: {exc}") from None
    private = loaded.key
    alg = jwk.get("alg") or loaded.algorithm_name
    if alg not in ALGORITHMS:
        raise KeySetError(f"key {jwk.get('kid', '?')!r}: algorithm {alg!r} is not supported")
    if not hasattr(private, "private_bytes"):
        raise KeySetError(f"key {jwk.get('kid', '?')!r}: a private key is required")
    public = private.public_key()
    algorithm: Any = {"ES256": ECAlgorithm, "EdDSA": OKPAlgorithm, "RS256": RSAAlgorithm}[alg]
    public_jwk = algorithm.to_jwk(public, as_dict=True)
    kid = str(jwk.get("kid") or _thumbprint(public_jwk))
    public_jwk.update(kid=kid, alg=alg, use="sig")
    material = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(kid, alg, private, public, _derive_mac_key(material), public_jwk)


def _derive_mac_key(material: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_MAC_INFO).derive(material)


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return jwt.utils.base64url_encode(hashlib.sha256(canonical).digest()).decode()
