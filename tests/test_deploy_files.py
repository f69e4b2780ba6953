"""Static checks of the deployment files: docker-compose.yml, Dockerfile and .dockerignore.

No Docker engine is needed; the files are parsed and checked against what the service expects.
"""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from authsvc.settings import ENV_VARS

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ENV_NAME = re.compile(r"\bAUTHSVC_[A-Z0-9_]+\b")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _command(service: dict[str, Any]) -> list[str]:
    """The service's command as an argument list, whether written as a list or a string."""
    command = service.get("command", [])
    if isinstance(command, str):
        return shlex.split(command)
    return [str(arg) for arg in command]


def _option(args: list[str], name: str) -> str | None:
    """The value following `name` in an argument list, or None when it is absent."""
    for flag, value in itertools.pairwise(args):
        if flag == name:
            return value
    return None


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def _profiles(service: dict[str, Any]) -> list[str]:
    return [str(profile) for profile in service.get("profiles", [])]


def _cluster_nodes() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in _services().items()
        if _option(_command(service), "--cluster-enabled") == "yes"
    }


def _dockerfile_final_stage() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the last build stage, with continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def test_compose_defines_redis_and_authsvc_services() -> None:
    services = _services()
    assert "redis" in services
    assert "authsvc" in services
    assert services["authsvc"]["build"] in (".", {"context": "."})


def test_compose_authsvc_waits_for_healthy_redis() -> None:
    services = _services()
    depends_on = services["authsvc"]["depends_on"]
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert "healthcheck" in services["redis"]


def test_compose_authsvc_uses_the_compose_redis() -> None:
    env = _environment(_services()["authsvc"])
    assert env["AUTHSVC_REDIS_URL"] == "redis://redis:6379/0"


def test_compose_names_only_contract_env_vars() -> None:
    named = set(ENV_NAME.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    assert named, "the compose file configures authsvc through AUTHSVC_* variables"
    assert named <= ENV_VARS, f"not in the contract: {sorted(named - ENV_VARS)}"


def test_compose_signing_keys_come_from_a_secret_file() -> None:
    compose = _compose()
    service = compose["services"]["authsvc"]
    secret_name = "authsvc_jwks"
    assert _environment(service)["AUTHSVC_JWKS_FILE"] == f"/run/secrets/{secret_name}"
    assert secret_name in service["secrets"]
    assert compose["secrets"][secret_name]["file"] == "./config/jwks.json"


def test_compose_redis_persists_with_appendonly() -> None:
    redis = _services()["redis"]
    args = _command(redis)
    assert _option(args, "--appendonly") == "yes"
    assert _option(args, "--appendfsync") == "everysec"
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])


def test_compose_cluster_profile_has_three_cluster_enabled_nodes() -> None:
    nodes = _cluster_nodes()
    assert sorted(nodes) == ["redis-node-1", "redis-node-2", "redis-node-3"]
    for name, service in nodes.items():
        assert "cluster" in _profiles(service)
        args = _command(service)
        assert _option(args, "--appendonly") == "yes"
        assert _option(args, "--cluster-announce-hostname") == name
        assert _option(args, "--cluster-preferred-endpoint-type") == "hostname"
        assert "healthcheck" in service


def test_compose_cluster_services_start_only_with_the_cluster_profile() -> None:
    services = _services()
    for name in [*_cluster_nodes(), "redis-cluster-init", "authsvc-cluster"]:
        assert _profiles(services[name]) == ["cluster"], name
    assert not _profiles(services["redis"])
    assert not _profiles(services["authsvc"])


def test_compose_cluster_init_creates_cluster_from_all_healthy_nodes() -> None:
    init = _services()["redis-cluster-init"]
    script = " ".join(_command(init))
    nodes = _cluster_nodes()
    assert "--cluster create" in script
    for name, service in nodes.items():
        port = _option(_command(service), "--port")
        assert f"{name}:{port}" in script
        assert init["depends_on"][name]["condition"] == "service_healthy"


def test_compose_authsvc_cluster_waits_for_cluster_init() -> None:
    service = _services()["authsvc-cluster"]
    env = _environment(service)
    assert env["AUTHSVC_REDIS_CLUSTER"] == "1"
    assert env["AUTHSVC_REDIS_URL"].startswith("redis://redis-node-")
    condition = service["depends_on"]["redis-cluster-init"]["condition"]
    assert condition == "service_completed_successfully"


def test_dockerfile_runs_as_non_root_user() -> None:
    users = [args for keyword, args in _dockerfile_final_stage() if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":", 1)[0]
    assert user not in {"root", "0"}


def test_dockerfile_declares_healthcheck() -> None:
    checks = [args for keyword, args in _dockerfile_final_stage() if keyword == "HEALTHCHECK"]
    assert checks
    assert "/healthz" in checks[-1]


def test_dockerfile_exposes_8080() -> None:
    exposed = [args for keyword, args in _dockerfile_final_stage() if keyword == "EXPOSE"]
    ports = {port.split("/", 1)[0] for args in exposed for port in args.split()}
    assert "8080" in ports


def test_dockerfile_names_only_contract_env_vars() -> None:
    named = set(ENV_NAME.findall(DOCKERFILE.read_text(encoding="utf-8")))
    assert named <= ENV_VARS, f"not in the contract: {sorted(named - ENV_VARS)}"


def test_dockerignore_keeps_keys_and_local_state_out_of_the_build_context() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".authsvc", "tests", "config/jwks*.json"} <= patterns
