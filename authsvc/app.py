"""The application factory: every resource is created, yielded and closed in cleanup_ctx."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from authsvc.domain.admin import AdminService
from authsvc.domain.clients import Clients, ClientsFileError
from authsvc.domain.clock import Clock, system_clock
from authsvc.domain.gate import SessionGate
from authsvc.domain.introspection import TokenInspector
from authsvc.domain.keys import KeyRing, KeySetError, data_dir_keyring, generate_jwks
from authsvc.domain.passwords import Hasher
from authsvc.domain.service import AuthService, Policy
from authsvc.domain.throttle import Throttle
from authsvc.domain.tokens import AccessTokens, RefreshTokens
from authsvc.metrics import FLUSH_EVERY as METRICS_FLUSH_EVERY
from authsvc.metrics import Metrics
from authsvc.settings import Settings
from authsvc.store import client as redis_client
from authsvc.store.accounts import AccountStore
from authsvc.store.keys import Keys
from authsvc.store.revocations import Revocation, RevocationFeed, RevocationStreams
from authsvc.store.scripts import Scripts
from authsvc.store.sessions import SessionStore, SessionTimes
from authsvc.store.throttles import ThrottleStore
from authsvc.web.access_log import FLUSH_EVERY as ACCESS_LOG_FLUSH_EVERY
from authsvc.web.access_log import AccessLog
from authsvc.web.admin import routes as admin_routes
from authsvc.web.context import (
    ACCESS_LOG,
    ADMIN,
    CLIENTS,
    FEED,
    HASHER,
    INSPECTOR,
    KEYRING,
    METRICS,
    REDIS,
    SERVICE,
    SETTINGS,
    STREAMS,
    THROTTLE,
)
from authsvc.web.handlers import routes
from authsvc.web.oauth import routes as oauth_routes
from authsvc.web.observe import add_routes
from authsvc.web.schemas import MAX_BODY
from authsvc.webhooks.outbox import Outbox
from authsvc.webhooks.worker import (
    CLAIM_IDLE_MS,
    CLUSTER_SWEEP_EVERY,
    SWEEP_EVERY,
    WebhookWorker,
)

log = logging.getLogger(__name__)

# Server limits for every way of serving the app: large enough that an oversized
# Authorization header reaches authsvc and gets its JSON 401 instead of aiohttp's bare 400.
HANDLER_ARGS: dict[str, Any] = {"max_field_size": 65536, "max_line_size": 65536}
# Seconds each shutdown step may take: a step that hangs (a dead Redis, a library that
# swallows a cancellation) is logged and left behind, so that SIGTERM always ends the process.
STOP_WAIT = 3.0


def load_keyring(settings: Settings) -> KeyRing:
    """The signing keys the settings name (see AUTHSVC_JWKS_FILE and AUTHSVC_DATA_DIR);
    KeySetError names the variable whose keys cannot be used."""
    if settings.jwt_secret is not None:
        return KeyRing.from_secret(settings.jwt_secret)
    if settings.jwks_file is None and settings.embedded:
        return KeyRing.from_jwks(generate_jwks())
    variable = "AUTHSVC_JWKS_FILE" if settings.jwks_file is not None else "AUTHSVC_DATA_DIR"
    try:
        if settings.jwks_file is None:
            return data_dir_keyring(settings.data_dir)
        _warn_if_readable_by_others(settings.jwks_file)
        return KeyRing.from_file(settings.jwks_file)
    except (KeySetError, OSError) as exc:
        raise KeySetError(f"{variable}: {exc}") from None


def load_clients(settings: Settings) -> Clients:
    """The service clients of AUTHSVC_CLIENTS_FILE (none without it)."""
    if settings.clients_file is None:
        return Clients()
    try:
        return Clients.from_file(settings.clients_file)
    except ClientsFileError as exc:
        raise ClientsFileError(f"AUTHSVC_CLIENTS_FILE: {exc}") from None


async def _end_streams(streams: RevocationStreams) -> None:
    # On shutdown: open revocation streams end, so that their requests finish in time.
    streams.end_all()


def _warn_if_readable_by_others(path: Path) -> None:
    # A warning, not a refusal: container secrets are often mounted readable by all, in a
    # container that has one user.
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "AUTHSVC_JWKS_FILE: %s holds private keys and is open to other users (mode %o);"
            " chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )


def create_app(
    settings: Settings, *, clock: Clock = system_clock, keyring: KeyRing | None = None
) -> web.Application:
    """The authsvc application for `settings`; storage is opened on start-up."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[KEYRING] = keyring or load_keyring(settings)
    app[CLIENTS] = load_clients(settings)
    app[STREAMS] = streams = RevocationStreams()
    app[ACCESS_LOG] = AccessLog(
        sys.stderr.buffer,
        json=settings.log_format == "json",
        enabled=logging.getLogger("authsvc.access").isEnabledFor(logging.INFO),
    )
    app.on_shutdown.append(lambda _: _end_streams(streams))
    add_routes(app, routes, oauth_routes, admin_routes)
    app.cleanup_ctx.append(_access_log)
    app.cleanup_ctx.append(_metrics)
    app.cleanup_ctx.append(_storage)
    app.cleanup_ctx.append(_hasher)
    app.cleanup_ctx.append(_service(clock))
    return app


async def _access_log(app: web.Application) -> AsyncIterator[None]:
    access_log = app[ACCESS_LOG]
    flusher = asyncio.create_task(
        _flush_every(ACCESS_LOG_FLUSH_EVERY, access_log.flush), name="authsvc.access_log"
    )
    yield
    await _stop(flusher)


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    # Request counts are folded (with several workers: written to the shared files) here.
    flusher = asyncio.create_task(
        _flush_every(METRICS_FLUSH_EVERY, app[METRICS].flush), name="authsvc.metrics"
    )
    yield
    await _stop(flusher)


async def _storage(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client: redis_client.Client
    if settings.redis_sentinels:
        client = redis_client.connect_sentinel(
            settings.redis_sentinels, settings.redis_sentinel_service
        )
        log.info("storage: Redis through Sentinel (%s)", settings.redis_sentinel_service)
    elif settings.redis_url is not None:
        client = redis_client.connect(settings.redis_url, cluster=settings.redis_cluster)
        log.info("storage: %s", "Redis Cluster" if settings.redis_cluster else "Redis")
    else:
        client = redis_client.embedded()
        log.info("storage: embedded (in-process fakeredis); data lasts as long as this process")
    app[REDIS] = client
    # On a single primary (directly or through Sentinel): the replica count that endings
    # wait on, and the check that the server is still a primary (watch_replicas). A
    # cluster's endings do not wait (see the README).
    watcher = None
    if isinstance(client, redis_client.BoundedRedis) and not settings.embedded:
        watcher = asyncio.create_task(client.watch_replicas(), name="authsvc.replicas")
    yield
    if watcher is not None:
        await _stop(watcher)
    try:
        async with asyncio.timeout(STOP_WAIT):
            await redis_client.close(client)
    except TimeoutError:
        log.warning("storage connections did not close within %s s", STOP_WAIT)


async def _hasher(app: web.Application) -> AsyncIterator[None]:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    app[HASHER] = Hasher(app[SETTINGS].bcrypt_rounds, threads or 1)
    yield
    await asyncio.get_running_loop().run_in_executor(None, app[HASHER].close)


def _service(clock: Clock):  # type: ignore[no-untyped-def]
    async def service(app: web.Application) -> AsyncIterator[None]:
        s = app[SETTINGS]
        client = app[REDIS]
        keys = Keys(s.key_prefix, cluster=s.redis_cluster, events=s.webhook_url is not None)
        scripts = Scripts(client)
        times = SessionTimes(s.session_idle_ttl * 1000, s.session_max_ttl * 1000)

        def shift_ms() -> int:
            return clock.shift_ms

        sessions = SessionStore(client, keys, scripts, times, shift_ms)
        gate = SessionGate(
            sessions.probe,
            clock,
            recheck_after=s.access_token_ttl,
            cache_size=s.session_cache_size,
        )
        streams = app[STREAMS]

        def heard(ended: Revocation) -> None:
            gate.revoked(ended.session_id, ended.reason)
            streams.publish(ended)

        feed = RevocationFeed(client, keys.channel, heard, on_reset=streams.end_all)
        gate.feed = feed
        app[FEED] = feed
        app[THROTTLE] = throttle = Throttle(
            ThrottleStore(scripts, shift_ms),
            keys,
            failure_limit=s.login_failure_limit,
            failure_window=s.login_failure_window,
            ip_limit=s.ip_rate_limit,
            ip_window=s.ip_rate_window,
        )
        access = AccessTokens(
            app[KEYRING],
            issuer=s.jwt_issuer,
            audience=s.jwt_audience,
            ttl=s.access_token_ttl,
            cache_size=s.token_cache_size,
        )
        refresh = RefreshTokens(app[KEYRING])
        policy = Policy(
            s.session_limit,
            s.session_idle_ttl,
            s.session_max_ttl,
            s.refresh_grace,
            s.session_limit_policy,
        )
        accounts = AccountStore(client, keys, scripts, shift_ms)
        app[SERVICE] = service = AuthService(
            accounts=accounts,
            sessions=sessions,
            hasher=app[HASHER],
            throttle=throttle,
            access=access,
            refresh=refresh,
            gate=gate,
            policy=policy,
            clock=clock,
            metrics=app[METRICS],
        )
        app[ADMIN] = AdminService(accounts, service)
        app[INSPECTOR] = TokenInspector(
            service=service,
            access=access,
            refresh=refresh,
            sessions=sessions,
            gate=gate,
            policy=policy,
        )
        task = asyncio.create_task(feed.run(), name="authsvc.revocation_feed")
        pruner = asyncio.create_task(_prune(gate, s.access_token_ttl), name="authsvc.gate_pruner")
        webhooks = _webhook_worker(s, client, keys, scripts, app[METRICS], clock)
        deliverer = webhooks and asyncio.create_task(webhooks.run(), name="authsvc.webhooks")
        # Start serving once revocations are heard (or after a short wait: until then every
        # token is checked in Redis, which is correct, only slower).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await feed.wait_subscribed()
        yield
        await _stop(task, pruner, *([deliverer] if deliverer else []))
        if webhooks is not None:
            try:
                async with asyncio.timeout(STOP_WAIT):
                    await webhooks.close()
            except (TimeoutError, RedisError) as exc:  # taken over after CLAIM_IDLE_MS
                log.warning("webhook events not handed back: %r", exc)

    return service


def _webhook_worker(
    s: Settings,
    client: redis_client.Client,
    keys: Keys,
    scripts: Scripts,
    metrics: Metrics,
    clock: Clock,
) -> WebhookWorker | None:
    if s.webhook_url is None or s.webhook_secret is None:
        return None
    consumer = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    outbox = Outbox(client, keys, scripts, consumer, CLAIM_IDLE_MS)
    return WebhookWorker(
        client=client,
        outbox=outbox,
        bell=keys.bell,
        url=s.webhook_url,
        secret=s.webhook_secret,
        metrics=metrics,
        clock=clock,
        sweep_every=CLUSTER_SWEEP_EVERY if keys.cluster else SWEEP_EVERY,
    )


async def _stop(*tasks: asyncio.Task[None]) -> None:
    """Cancel background tasks and wait, at most STOP_WAIT, for them to end."""
    for task in tasks:
        task.cancel()
    done, pending = await asyncio.wait(tasks, timeout=STOP_WAIT)
    for task in pending:
        log.warning("%s did not stop within %s s", task.get_name(), STOP_WAIT)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %r", task.get_name(), task.exception())


async def _flush_every(seconds: float, flush: Callable[[], None]) -> None:
    """Call `flush` every `seconds` until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(seconds)
            flush()
    finally:
        flush()


async def _prune(gate: SessionGate, every: float) -> None:
    while True:
        await asyncio.sleep(min(every, 60.0))
        gate.forget_expired()
