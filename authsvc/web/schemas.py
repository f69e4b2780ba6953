"""Request bodies: reading, size and type checks, and typed decoding."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from aiohttp import web

from authsvc.domain.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

MAX_BODY = 64 * 1024


class Credentials(msgspec.Struct, frozen=True):
    """Signup and login."""

    email: str
    password: str


class RefreshRequest(msgspec.Struct, frozen=True):
    """Refresh."""

    refresh_token: str


class PasswordChange(msgspec.Struct, frozen=True):
    """Password change."""

    current_password: str
    new_password: str


class AccountDeletion(msgspec.Struct, frozen=True):
    """Deleting one's own account."""

    password: str


class SessionLimit(msgspec.Struct, frozen=True):
    """An operator setting a user's own session limit (null: back to the default)."""

    limit: int | None


_BODIES = (Credentials, RefreshRequest, PasswordChange, AccountDeletion, SessionLimit)
_Body = TypeVar("_Body", Credentials, RefreshRequest, PasswordChange, AccountDeletion, SessionLimit)
_DECODERS: dict[type, msgspec.json.Decoder[object]] = {
    kind: msgspec.json.Decoder(kind) for kind in _BODIES
}


async def read_body(request: web.Request, kind: type[_Body]) -> _Body:
    """The request's JSON body as `kind`: 413 first, then 415, then 400."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge()
    if request.content_type != "application/json":
        raise UnsupportedMediaType()
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge() from None
    try:
        body: _Body = _DECODERS[kind].decode(raw)  # type: ignore[assignment]
    except msgspec.ValidationError as exc:
        raise InvalidRequest(str(exc).replace("`", "'")) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("body is not valid JSON") from None
    return body


async def read_token_form(request: web.Request) -> str:
    """The `token` of an RFC 7662 / 7009 form body: 413 first, then 400 for anything that is
    not one form-encoded `token` (`token_type_hint` may come along; it is only a hint)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge()
    if request.content_type != "application/x-www-form-urlencoded":
        raise InvalidRequest("body must be application/x-www-form-urlencoded")
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge() from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("body is not a valid form") from None
    tokens = form.getall("token", [])
    if len(tokens) != 1 or not isinstance(tokens[0], str):
        raise InvalidRequest("exactly one token parameter is required")
    return tokens[0]  # an empty one is a token too: inactive (RFC 7662), nothing to revoke
