"""Typed application keys: everything handlers reach through the app."""

from __future__ import annotations

from aiohttp import web

from authsvc.domain.admin import AdminService
from authsvc.domain.clients import Clients
from authsvc.domain.introspection import TokenInspector
from authsvc.domain.keys import KeyRing
from authsvc.domain.passwords import Hasher
from authsvc.domain.service import AuthService
from authsvc.domain.throttle import Throttle
from authsvc.metrics import Metrics
from authsvc.settings import Settings
from authsvc.store.client import Client
from authsvc.store.revocations import RevocationFeed, RevocationStreams
from authsvc.web.access_log import AccessLog

SETTINGS = web.AppKey("authsvc.settings", Settings)
SERVICE = web.AppKey("authsvc.service", AuthService)
KEYRING = web.AppKey("authsvc.keyring", KeyRing)
METRICS = web.AppKey("authsvc.metrics", Metrics)
ACCESS_LOG = web.AppKey("authsvc.access_log", AccessLog)
REDIS: web.AppKey[Client] = web.AppKey("authsvc.redis")
HASHER = web.AppKey("authsvc.hasher", Hasher)
FEED = web.AppKey("authsvc.revocation_feed", RevocationFeed)
CLIENTS = web.AppKey("authsvc.clients", Clients)
ADMIN = web.AppKey("authsvc.admin", AdminService)
THROTTLE = web.AppKey("authsvc.throttle", Throttle)
INSPECTOR = web.AppKey("authsvc.token_inspector", TokenInspector)
STREAMS = web.AppKey("authsvc.revocation_streams", RevocationStreams)
