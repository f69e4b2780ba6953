"""Every request runs inside `observed`: request id, errors as JSON, metrics, access log.

A wrapper added with each route, not an aiohttp middleware: aiohttp's middleware chain
costs about 2 µs a request (measured in the benchmark's `GET /v1/me`, whose whole budget is
about 45), and each wrapper holds its route's recorders for the metrics and the access log:
no lookup per request. Requests that match no route reach routes of their own: every path has
a route for methods it does not serve (JSON 405 with Allow), and a last route takes every
other path (JSON 404). (Only the request target `*` of `OPTIONS *` matches no path: it gets
aiohttp's plain 404.)"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from multidict import istr
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
X_REQUEST_ID = istr("X-Request-Id")  # istr: a header name not case-folded on each use
UNMATCHED = "unmatched"  # the route name of requests for paths authsvc does not serve

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, *tables: web.RouteTableDef) -> None:
    """Add every route of `tables`, each handler inside `observed`, and the routes that
    answer the requests no route of theirs matches (405 on a known path, else 404)."""
    by_path: dict[str, list[web.RouteDef]] = {}
    for table in tables:
        for route in table:
            assert isinstance(route, web.RouteDef)
            by_path.setdefault(route.path, []).append(route)
    for path, routes in by_path.items():
        resource = app.router.add_resource(path)
        allowed = set()
        for route in routes:
            handler = observed(app, route.handler, path)
            resource.add_route(route.method, handler)
            allowed.add(route.method)
            if route.method == hdrs.METH_GET and route.kwargs.get("allow_head", True):
                resource.add_route(hdrs.METH_HEAD, handler)
                allowed.add(hdrs.METH_HEAD)
        refuse = _refuse(functools.partial(MethodNotAllowed, ", ".join(sorted(allowed))))
        resource.add_route(hdrs.METH_ANY, observed(app, refuse, path))
    app.router.add_route(hdrs.METH_ANY, "/{path:.*}", observed(app, _refuse(NotFound), UNMATCHED))


def observed(app: web.Application, handler: Handler, route: str) -> Handler:
    """`handler` answering every failure with the contract's JSON error, measured and
    logged as `route`."""
    metrics = app[METRICS]
    count_request = metrics.http.recorder(route)
    access_log = app[ACCESS_LOG]
    log_request = access_log.record if access_log.enabled else None

    async def observe(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request.headers.get(X_REQUEST_ID)
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = f"{_ID_PREFIX}{next(_sequence):08x}"
        try:
            response = await handler(request)
        except AuthError as exc:
            response = error_response(exc)
            if isinstance(exc, RateLimited):
                metrics.throttled.labels(route).inc()
        except web.HTTPException as exc:
            response = error_response(_from_http(exc))
        except (RedisError, OSError) as exc:
            metrics.redis_errors.inc()
            log.warning(
                "storage unavailable: %s", type(exc).__name__, extra={"request_id": request_id}
            )
            response = error_response(Unavailable(retry_after=1))
        except Exception:
            log.exception("unhandled error", extra={"request_id": request_id})
            response = error_response(AuthError())
        if not response.prepared:  # a stream has sent its headers (see oauth.revocations)
            headers = response.headers
            headers[X_REQUEST_ID] = request_id
            # Not aiohttp's, which names its own and Python's versions.
            headers[hdrs.SERVER] = "authsvc"
        elapsed = time.perf_counter() - started
        status = response.status
        count_request((status, elapsed))
        if log_request is not None:
            log_request((started, elapsed, request_id, request.method, route, status))
        return response

    return observe


def _refuse(error: Callable[[], AuthError]) -> Handler:
    """A handler that raises a new `error()` each time (a raised exception keeps its
    traceback: one instance raised again and again would hold every request's frames)."""

    async def refuse(request: web.Request) -> web.StreamResponse:
        raise error()

    return refuse


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
