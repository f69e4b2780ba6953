"""The command line as users run it: serve on the embedded default, keys, bad configuration."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp

from authsvc.cli import _forget_metrics_of_earlier_runs
from authsvc.domain.keys import KeyRing
from tests.process import Service


def _authsvc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
    return subprocess.run(
        [sys.executable, "-m", "authsvc", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_embedded_default_serves_the_whole_flow_and_stops_cleanly(tmp_path: Path) -> None:
    with Service({"AUTHSVC_BCRYPT_ROUNDS": "4"}, log=tmp_path / "serve.log") as service:
        service.wait_ready()
        async with aiohttp.ClientSession(service.url) as http:
            creds = {"email": "embedded@example.com", "password": "embedded password"}
            assert (await http.post("/v1/auth/signup", json=creds)).status == 201
            tokens = await (await http.post("/v1/auth/login", json=creds)).json()
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            me = await http.get("/v1/me", headers=headers)
            assert (await me.json())["email"] == "embedded@example.com"
            assert (await http.post("/v1/auth/logout", headers=headers)).status == 204
            assert (await http.get("/v1/me", headers=headers)).status == 401
            assert (await http.get("/readyz")).status == 200
        assert service.stop() == 0
    lines = (tmp_path / "serve.log").read_text().splitlines()
    storage = [json.loads(line) for line in lines if '"storage: ' in line]
    assert len(storage) == 1
    assert "embedded" in storage[0]["msg"]


def test_embedded_default_refuses_several_workers() -> None:
    result = _authsvc("serve", "--workers", "2")
    assert result.returncode == 2
    assert "AUTHSVC_REDIS_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_setting_stops_start_up_with_one_line_naming_it() -> None:
    for env, name in [
        ({"AUTHSVC_SESSION_LIMIT": "many"}, "AUTHSVC_SESSION_LIMIT"),
        ({"AUTHSVC_BCRYPT_ROUNDS": "3"}, "AUTHSVC_BCRYPT_ROUNDS"),
        ({"AUTHSVC_JWT_SECRET": "short"}, "AUTHSVC_JWT_SECRET"),
        ({"AUTHSVC_REDIS_URL": "http://x"}, "AUTHSVC_REDIS_URL"),
        ({"AUTHSVC_TRUSTED_PROXIES": "not-a-cidr"}, "AUTHSVC_TRUSTED_PROXIES"),
        ({"AUTHSVC_JWKS_FILE": "/nonexistent/jwks.json"}, "/nonexistent/jwks.json"),
    ]:
        result = _authsvc("serve", env=env)
        assert result.returncode == 2, env
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert name in lines[0]


def test_secret_and_key_file_together_is_an_error(tmp_path: Path) -> None:
    keys = tmp_path / "jwks.json"
    assert _authsvc("keys", "generate", "--out", str(keys)).returncode == 0
    result = _authsvc("serve", env={"AUTHSVC_JWKS_FILE": str(keys), "AUTHSVC_JWT_SECRET": "x" * 40})
    assert result.returncode == 2
    assert "AUTHSVC_JWT_SECRET" in result.stderr


def test_keys_generate_writes_a_private_key_set_readable_only_by_its_owner(tmp_path: Path) -> None:
    for alg in ("ES256", "EdDSA", "RS256"):
        out = tmp_path / f"{alg}.json"
        result = _authsvc("keys", "generate", "--alg", alg, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        ring = KeyRing.from_file(out)
        assert ring.signing.alg == alg
        assert ring.public_jwks()["keys"][0]["kid"] == ring.signing.kid
    again = _authsvc("keys", "generate", "--out", str(tmp_path / "ES256.json"))
    assert again.returncode == 1


def test_config_file_sets_the_same_keys_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "authsvc.toml"
    config.write_text("session_limit = 0\n")
    result = _authsvc("serve", "--config", str(config))
    assert result.returncode == 2
    assert "AUTHSVC_SESSION_LIMIT" in result.stderr
    config.write_text("session_limit = 3\nunknown_key = 1\n")
    result = _authsvc("serve", "--config", str(config))
    assert "unknown_key" in result.stderr


def test_a_given_metrics_directory_loses_only_the_metric_files_of_earlier_runs(
    tmp_path: Path,
) -> None:
    stale = ["counter_11.db", "gauge_mostrecent_11.db", "histogram_12.db", "summary_12.db"]
    for name in [*stale, "keep.db", "counter-notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "counter_dir.db").mkdir()  # not a file: left alone, no crash
    _forget_metrics_of_earlier_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "counter-notes.txt",
        "counter_dir.db",
        "keep.db",
    ]
