"""Every error a client can see: each class carries its HTTP status and `error` code."""

from __future__ import annotations


class AuthError(Exception):
    """Base of all client-visible errors."""

    status = 500
    code = "internal_error"
    default = "internal error"

    def __init__(self, description: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(description or self.default)
        self.description = description or self.default
        self.retry_after = retry_after


class InvalidRequest(AuthError):
    """The request is malformed or breaks a rule."""

    status, code, default = 400, "invalid_request", "invalid request"


class InvalidCredentials(AuthError):
    """Email or password is wrong (indistinguishably)."""

    status, code, default = 401, "invalid_credentials", "invalid email or password"


class InvalidGrant(AuthError):
    """The refresh token is unknown, expired, revoked, malformed or reused."""

    status, code, default = 401, "invalid_grant", "invalid refresh token"

    def __init__(self, description: str | None = None, *, reason: str = "") -> None:
        super().__init__(description)
        self.reason = reason  # why its session ended, when it did (contract 6)


class InvalidToken(AuthError):
    """The Bearer token is missing or invalid."""

    status, code, default = 401, "invalid_token", "invalid access token"

    def __init__(
        self, description: str | None = None, *, presented: bool = True, reason: str = ""
    ) -> None:
        super().__init__(description)
        self.presented = presented
        self.reason = reason  # why its session ended, when it did (contract 6)


class InvalidClient(AuthError):
    """Service-client credentials are missing or wrong (HTTP Basic)."""

    status, code, default = 401, "invalid_client", "client authentication failed"


class InsufficientScope(AuthError):
    """The client may not use this endpoint."""

    status, code, default = 403, "insufficient_scope", "the client lacks the scope for this"


class SessionLimitReached(AuthError):
    """Login at the session limit under the 'deny' policy."""

    status, code, default = 409, "session_limit_reached", "the session limit is reached"


class NotFound(AuthError):
    """No such route or session."""

    status, code, default = 404, "not_found", "not found"


class MethodNotAllowed(AuthError):
    """The route exists but not with this method."""

    status, code, default = 405, "method_not_allowed", "method not allowed"

    def __init__(self, allowed: str) -> None:
        super().__init__()
        self.allowed = allowed


class EmailTaken(AuthError):
    """Signup with an email that is already registered."""

    status, code, default = 409, "email_taken", "email already registered"


class PayloadTooLarge(AuthError):
    """The body is over the size limit."""

    status, code, default = 413, "payload_too_large", "request body over 64 KiB"


class UnsupportedMediaType(AuthError):
    """The body is not JSON."""

    status, code, default = 415, "unsupported_media_type", "body must be application/json"


class RateLimited(AuthError):
    """Too many attempts; `retry_after` says when to come back."""

    status, code, default = 429, "rate_limited", "too many attempts"


class Unavailable(AuthError):
    """Storage is unreachable or the service is saturated; nothing was half-written."""

    status, code, default = 503, "unavailable", "temporarily unavailable"
