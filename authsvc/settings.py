"""Typed settings from `AUTHSVC_*` environment variables and an optional TOML file."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from yarl import URL

PREFIX = "AUTHSVC_"


class SettingsError(ValueError):
    """A configuration value is missing or invalid; the message names the variable."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything authsvc can be configured with. Field `x` is variable `AUTHSVC_X`."""

    redis_url: str | None = None
    redis_cluster: bool = False
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_service: str = "mymaster"
    key_prefix: str = "authsvc"
    session_limit: int = 5
    session_limit_policy: str = "evict"
    access_token_ttl: int = 900
    session_idle_ttl: int = 1_209_600
    session_max_ttl: int = 2_592_000
    refresh_grace: int = 10
    bcrypt_rounds: int = 12
    jwks_file: Path | None = None
    jwt_secret: str | None = dataclasses.field(default=None, repr=False)
    data_dir: Path = Path(".authsvc")
    jwt_issuer: str = "authsvc"
    jwt_audience: str = "authsvc"
    login_failure_limit: int = 10
    login_failure_window: int = 900
    ip_rate_limit: int = 300
    ip_rate_window: int = 60
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    clients_file: Path | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = dataclasses.field(default=None, repr=False)
    token_cache_size: int = 100_000
    session_cache_size: int = 100_000
    log_level: str = "info"
    log_format: str = "json"

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured and storage runs in-process."""
        return self.redis_url is None and not self.redis_sentinels


# (minimum, maximum) for integer settings.
_BOUNDS: dict[str, tuple[int, int]] = {
    "session_limit": (1, 1000),
    "access_token_ttl": (1, 86_400),
    "session_idle_ttl": (1, 31_536_000),
    "session_max_ttl": (1, 315_360_000),
    "refresh_grace": (0, 300),
    "bcrypt_rounds": (4, 31),
    "login_failure_limit": (1, 1_000_000),
    "login_failure_window": (1, 86_400),
    "ip_rate_limit": (0, 1_000_000),
    "ip_rate_window": (1, 86_400),
    "token_cache_size": (1, 10_000_000),
    "session_cache_size": (1, 10_000_000),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("json", "text"),
    "session_limit_policy": ("evict", "deny"),
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
ENV_VARS = frozenset(PREFIX + name.upper() for name in _FIELDS)


def load_settings(env: Mapping[str, str], config_file: Path | None = None) -> Settings:
    """Build settings from a TOML file (keys as lower-case field names) overlaid by `env`."""
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            table = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"--config {config_file}: {exc}") from None
        for key, value in table.items():
            name = key.lower().removeprefix(PREFIX.lower())
            if name not in _FIELDS:
                raise SettingsError(f"--config {config_file}: unknown key {key!r}")
            raw[name] = value
    for key, value in env.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX) :].lower()
            if name not in _FIELDS:
                raise SettingsError(f"{key}: unknown setting")
            raw[name] = value
    values = {name: _convert(name, value) for name, value in raw.items()}
    settings = Settings(**values)
    _check(settings)
    return settings


def _convert(name: str, value: Any) -> Any:
    var = PREFIX + name.upper()
    kind = _FIELDS[name].type
    text = str(value).strip()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{var}: expected 0 or 1, got {text!r}")
    if kind == "int":
        try:
            number = int(value) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None:
            raise SettingsError(f"{var}: expected a whole number, got {text!r}")
        low, high = _BOUNDS[name]
        if not low <= number <= high:
            raise SettingsError(f"{var}: must be between {low} and {high}, got {number}")
        return number
    if name == "redis_sentinels":
        return _sentinels(var, value if isinstance(value, list) else text.split(","))
    if name == "trusted_proxies":
        items = value if isinstance(value, list) else text.replace(",", " ").split()
        try:
            return tuple(ipaddress.ip_network(str(item), strict=False) for item in items)
        except ValueError as exc:
            raise SettingsError(f"{var}: {exc}") from None
    if kind in ("Path", "Path | None"):
        if not text:
            raise SettingsError(f"{var}: must not be empty")
        return Path(text)
    if name in _CHOICES:
        text = text.lower()
        if text not in _CHOICES[name]:
            raise SettingsError(f"{var}: expected one of {', '.join(_CHOICES[name])}, got {text!r}")
        return text
    if not text and name != "jwt_secret":
        raise SettingsError(f"{var}: must not be empty")
    return str(value) if name == "jwt_secret" else text


def _sentinels(var: str, items: list[Any]) -> tuple[tuple[str, int], ...]:
    """`host:port` items (`[v6 address]:port` too) as (host, port) pairs."""
    found = []
    for item in (str(i).strip() for i in items):
        host, _, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or " " in host:
            raise SettingsError(f"{var}: expected host:port[,host:port...], got {item!r}")
        found.append((host, int(port)))
    if not found:
        raise SettingsError(f"{var}: expected host:port[,host:port...]")
    return tuple(found)


def _check(s: Settings) -> None:
    if s.redis_url is not None and not s.redis_url.startswith(("redis://", "rediss://")):
        raise SettingsError("AUTHSVC_REDIS_URL: must start with redis:// or rediss://")
    if s.redis_cluster and s.redis_url is None:
        raise SettingsError("AUTHSVC_REDIS_CLUSTER: needs AUTHSVC_REDIS_URL")
    if s.redis_sentinels and s.redis_url is not None:
        raise SettingsError("AUTHSVC_REDIS_SENTINELS: set either it or AUTHSVC_REDIS_URL, not both")
    if s.jwt_secret is not None and s.jwks_file is not None:
        raise SettingsError("AUTHSVC_JWT_SECRET: set either it or AUTHSVC_JWKS_FILE, not both")
    if s.jwt_secret is not None and len(s.jwt_secret.encode()) < 32:
        raise SettingsError("AUTHSVC_JWT_SECRET: must be at least 32 bytes")
    if s.session_max_ttl < s.session_idle_ttl:
        raise SettingsError(
            "AUTHSVC_SESSION_MAX_TTL: must not be shorter than AUTHSVC_SESSION_IDLE_TTL"
        )
    if any(c in s.key_prefix for c in "{} \t\r\n"):
        raise SettingsError("AUTHSVC_KEY_PREFIX: must not contain braces or white space")
    _check_webhooks(s)


# Standard Webhooks secrets: "whsec_" and the base64 of 24 to 64 random bytes.
_SECRET_PREFIX = "whsec_"  # noqa: S105 (a format's prefix, not a secret)
_SECRET_BYTES = (24, 64)


def _check_webhooks(s: Settings) -> None:
    if s.webhook_url is None:
        if s.webhook_secret is not None:
            raise SettingsError("AUTHSVC_WEBHOOK_SECRET: set without AUTHSVC_WEBHOOK_URL")
        return
    try:
        url = URL(s.webhook_url)
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host or url.fragment:
        raise SettingsError("AUTHSVC_WEBHOOK_URL: must be an http:// or https:// URL")
    if s.webhook_secret is None:
        raise SettingsError("AUTHSVC_WEBHOOK_SECRET: required with AUTHSVC_WEBHOOK_URL")
    secret = s.webhook_secret
    encoded = secret.removeprefix(_SECRET_PREFIX)
    try:  # padded or not, as generators differ
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    low, high = _SECRET_BYTES
    if not secret.startswith(_SECRET_PREFIX) or not low <= len(key) <= high:
        raise SettingsError(
            f"AUTHSVC_WEBHOOK_SECRET: expected {_SECRET_PREFIX} and the base64 of"
            f" {low} to {high} random bytes"
        )


def risky(s: Settings) -> list[str]:
    """Warnings for values that work but are unusual in production (short lifetimes are how
    client teams test their expiry handling)."""
    notes = []
    if s.access_token_ttl < 60:
        notes.append(f"AUTHSVC_ACCESS_TOKEN_TTL={s.access_token_ttl}: access tokens expire fast")
    if s.session_idle_ttl < 300:
        notes.append(f"AUTHSVC_SESSION_IDLE_TTL={s.session_idle_ttl}: sessions end quickly")
    if s.session_max_ttl < 3600:
        notes.append(f"AUTHSVC_SESSION_MAX_TTL={s.session_max_ttl}: sessions end quickly")
    if s.login_failure_window < 60:
        notes.append(f"AUTHSVC_LOGIN_FAILURE_WINDOW={s.login_failure_window}: little throttling")
    if s.ip_rate_limit and s.ip_rate_window < 10:
        notes.append(f"AUTHSVC_IP_RATE_WINDOW={s.ip_rate_window}: little throttling")
    if s.bcrypt_rounds < 10:
        notes.append(f"AUTHSVC_BCRYPT_ROUNDS={s.bcrypt_rounds}: passwords are cheap to guess")
    return notes
