"""Accept authsvc's access tokens in an API backend (a resource server), with revocation
pushed to it.

    from authsvc.resource import Verifier, InvalidToken, Unavailable
    async with Verifier("http://authsvc:8080", client_id="orders", client_secret="...",
                        audience="authsvc", issuer="authsvc") as verifier:
        principal = await verifier.verify(access_token)  # .user_id, .session_id, .claims

Signatures are checked locally against authsvc's JWKS. A session is introspected once, when
the verifier first sees it, and again after every reconnect of the revocation stream; from
then on the stream says when it ends, so a request costs no network at all. When the
verifier cannot know (authsvc unreachable and the stream down) it raises Unavailable: it
fails closed, never open. Middlewares: `authsvc.resource.aiohttp`, `authsvc.resource.asgi`.

This package imports nothing of the authsvc server."""

from __future__ import annotations

from authsvc.resource.verifier import InvalidToken, Principal, Unavailable, Verifier

__all__ = ["InvalidToken", "Principal", "Unavailable", "Verifier"]
