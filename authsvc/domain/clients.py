"""Service clients: resource servers, gateways and operators that call authsvc with HTTP Basic
credentials. The clients file holds names, scopes and a hash of each secret, never a secret.

Secrets are 256 random bits, so a guess is hopeless whatever the hash: a SHA-256 digest,
compared in constant time, costs a microsecond where bcrypt would cost a hash thread per
introspection."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SCOPES = ("introspect", "revocations", "admin")
NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HASH_PREFIX = "sha256:"


class ClientsFileError(ValueError):
    """The clients file cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class ServiceClient:
    """One client: its name, what it may do, and its secret's digest."""

    name: str
    scopes: frozenset[str]
    secret_hash: str

    def __repr__(self) -> str:
        return f"ServiceClient({self.name!r}, scopes={sorted(self.scopes)})"


class Clients:
    """The clients authsvc accepts."""

    def __init__(self, clients: Iterable[ServiceClient] = ()) -> None:
        self._by_name = {c.name: c for c in clients}
        # Unknown names are checked against this, so they take as long as known ones.
        self._dummy = _digest(secrets.token_urlsafe(32))

    def __len__(self) -> int:
        return len(self._by_name)

    def authenticate(self, name: str, secret: str) -> ServiceClient | None:
        """The client whose name and secret these are, or None."""
        client = self._by_name.get(name)
        expected = client.secret_hash if client is not None else self._dummy
        matches = hmac.compare_digest(_digest(secret), expected)
        return client if matches and client is not None else None

    @classmethod
    def from_file(cls, path: Path) -> Clients:
        """The clients of a clients file."""
        return cls(_parse(_read(path), path))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the clients file's lock: two commands at once must not lose a change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def add_client(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Add a client to the file (created with mode 0600 if missing); returns its new secret,
    which is stored nowhere."""
    with _locked(path):
        return _add(path, name, scopes)


def remove_client(path: Path, name: str) -> None:
    """Remove a client from the file."""
    with _locked(path):
        document = _read(path)
        _parse(document, path)
        if document["clients"].pop(name, None) is None:
            raise ClientsFileError(f"{path}: no client {name!r}")
        _write(path, document)


def _add(path: Path, name: str, scopes: Iterable[str]) -> str:
    if not NAME.fullmatch(name):
        raise ClientsFileError(f"client name {name!r}: use 1 to 64 of A-Z a-z 0-9 . _ -")
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        raise ClientsFileError(f"scopes must be some of {', '.join(SCOPES)}, got {wanted}")
    document = _read(path) if path.exists() else {"clients": {}}
    _parse(document, path)
    if name in document["clients"]:
        raise ClientsFileError(f"{path}: client {name!r} exists; remove it first")
    secret = secrets.token_urlsafe(32)  # URL-safe, so it needs no escaping in Basic auth
    document["clients"][name] = {"scopes": wanted, "secret_hash": _digest(secret)}
    _write(path, document)
    return secret


def _digest(secret: str) -> str:
    return _HASH_PREFIX + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ClientsFileError(f"{path}: {exc}") from None


def _parse(document: Any, path: Path) -> list[ServiceClient]:
    entries = document.get("clients") if isinstance(document, dict) else None
    if not isinstance(entries, dict):
        raise ClientsFileError(f'{path}: expected {{"clients": {{NAME: {{...}}}}}}')
    clients = []
    for name, entry in entries.items():
        scopes = entry.get("scopes") if isinstance(entry, dict) else None
        digest = entry.get("secret_hash") if isinstance(entry, dict) else None
        if (
            not NAME.fullmatch(name)
            or not isinstance(scopes, list)
            or not all(s in SCOPES for s in scopes)
            or not isinstance(digest, str)
            or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
        ):
            raise ClientsFileError(f"{path}: client {name!r} is malformed")
        clients.append(ServiceClient(name, frozenset(scopes), digest))
    return clients


def _write(path: Path, document: Any) -> None:
    """Replace the file atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".clients-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
