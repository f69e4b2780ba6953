"""One middleware around every request: request id, errors as JSON, metrics, access log."""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from authsvc.domain.errors import (
    AuthError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
)
from authsvc.web.context import ACCESS_LOG, METRICS
from authsvc.web.responses import error_response

log = logging.getLogger("authsvc.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Generated request ids: a random per-process prefix and a counter (unique, and far cheaper
# than a UUID per request).
_ID_PREFIX = secrets.token_hex(8)
_sequence = itertools.count()


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler; turn every failure into the contract's JSON error; measure; log."""
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-Id")
    if request_id is None or not _REQUEST_ID.fullmatch(request_id):
        request_id = f"{_ID_PREFIX}{next(_sequence):08x}"
    app = request.app
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        response = await handler(request)
    except AuthError as exc:
        response = error_response(exc)
        if isinstance(exc, RateLimited):
            app[METRICS].throttled.labels(route).inc()
    except web.HTTPException as exc:
        response = error_response(_from_http(exc))
    except (RedisError, OSError) as exc:
        app[METRICS].redis_errors.inc()
        log.warning("storage unavailable: %s", type(exc).__name__, extra={"request_id": request_id})
        response = error_response(Unavailable(retry_after=1))
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id})
        response = error_response(AuthError())
    if not response.prepared:  # a stream has sent its headers (see oauth.revocations)
        headers = response.headers
        headers["X-Request-Id"] = request_id
        # Not aiohttp's, which names its own and Python's versions.
        headers["Server"] = "authsvc"
    elapsed = time.perf_counter() - started
    status = response.status
    app[METRICS].http.observe(route, status, elapsed)
    access_log = app[ACCESS_LOG]
    if access_log.enabled:
        access_log.write(request_id, request.method, route, status, elapsed)
    return response


def _from_http(exc: web.HTTPException) -> AuthError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(", ".join(sorted(exc.allowed_methods)))
    if isinstance(exc, web.HTTPNotFound):
        return NotFound()
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge()
    error = AuthError(exc.reason)
    error.status = exc.status
    error.code = "invalid_request" if 400 <= exc.status < 500 else "internal_error"
    return error
