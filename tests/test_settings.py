"""Settings: defaults, conversion, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from authsvc.settings import ENV_VARS, Settings, SettingsError, load_settings


def test_defaults_match_the_contract() -> None:
    s = load_settings({})
    assert s.embedded
    assert (s.session_limit, s.access_token_ttl, s.refresh_grace, s.bcrypt_rounds) == (
        5,
        900,
        10,
        12,
    )
    assert (s.session_idle_ttl, s.session_max_ttl) == (1_209_600, 2_592_000)
    assert (s.login_failure_limit, s.login_failure_window) == (10, 900)
    assert (s.ip_rate_limit, s.ip_rate_window) == (300, 60)
    assert s.data_dir == Path(".authsvc")
    assert len(ENV_VARS) == 29
    assert (s.token_cache_size, s.session_cache_size) == (100_000, 100_000)
    assert s.session_limit_policy == "evict"
    assert s.clients_file is None


def test_environment_overrides_and_converts() -> None:
    s = load_settings(
        {
            "AUTHSVC_REDIS_URL": "redis://127.0.0.1:6379/0",
            "AUTHSVC_REDIS_CLUSTER": "1",
            "AUTHSVC_SESSION_LIMIT": "7",
            "AUTHSVC_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
            "AUTHSVC_LOG_LEVEL": "DEBUG",
            "UNRELATED": "x",
        }
    )
    assert s.redis_cluster
    assert s.session_limit == 7
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "192.168.1.1/32"]
    assert s.log_level == "debug"


def test_secret_is_not_in_repr() -> None:
    s = Settings(jwt_secret="y" * 40)
    assert "y" * 40 not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTHSVC_SESSION_LIMIT": "0"}, "AUTHSVC_SESSION_LIMIT"),
        ({"AUTHSVC_REDIS_CLUSTER": "maybe"}, "AUTHSVC_REDIS_CLUSTER"),
        ({"AUTHSVC_REDIS_CLUSTER": "1"}, "AUTHSVC_REDIS_CLUSTER"),
        ({"AUTHSVC_LOG_FORMAT": "xml"}, "AUTHSVC_LOG_FORMAT"),
        ({"AUTHSVC_KEY_PREFIX": "a{b}"}, "AUTHSVC_KEY_PREFIX"),
        (
            {"AUTHSVC_SESSION_IDLE_TTL": "100", "AUTHSVC_SESSION_MAX_TTL": "99"},
            "AUTHSVC_SESSION_MAX_TTL",
        ),
        ({"AUTHSVC_SESION_LIMIT": "5"}, "AUTHSVC_SESION_LIMIT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)
