"""The command line: `authsvc serve` and `authsvc keys generate`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from multiprocessing import connection
from pathlib import Path
from types import FrameType

from aiohttp import web

from authsvc import logs
from authsvc.app import HANDLER_ARGS, create_app, load_clients, load_keyring
from authsvc.domain.clients import SCOPES, ClientsFileError, add_client, remove_client
from authsvc.domain.keys import ALGORITHMS, KeySetError, generate_jwks, write_private_jwks
from authsvc.metrics import MULTIPROC_DIR
from authsvc.settings import Settings, SettingsError, load_settings, risky

log = logging.getLogger("authsvc")

new_event_loop: Callable[[], asyncio.AbstractEventLoop]
try:  # uvloop (a faster event loop) is a dependency where it installs
    from uvloop import new_event_loop
except ImportError:  # pragma: no cover - not on Windows: asyncio's own loop
    from asyncio import new_event_loop

SHUTDOWN_TIMEOUT = 10.0  # seconds that requests in flight get to finish on SIGTERM


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="authsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve.add_argument("--config", type=Path, help="TOML file with the same keys as AUTHSVC_*")
    keys = commands.add_parser("keys", help="signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    generate = key_commands.add_parser("generate", help="write a new private JWK Set")
    generate.add_argument("--alg", choices=ALGORITHMS, default="ES256")
    generate.add_argument("--out", type=Path, required=True)
    clients = commands.add_parser("clients", help="service clients (resource servers, gateways)")
    client_commands = clients.add_subparsers(dest="clients_command", required=True)
    add = client_commands.add_parser("add", help="add a client; prints its secret once")
    add.add_argument("name")
    add.add_argument("--scope", action="append", required=True, choices=SCOPES)
    add.add_argument("--file", type=Path, required=True)
    remove = client_commands.add_parser("remove", help="remove a client")
    remove.add_argument("name")
    remove.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "keys":
        return _generate_keys(args.alg, args.out)
    if args.command == "clients":
        return _clients(args.clients_command, args.name, args.file, getattr(args, "scope", []))
    return _serve(args.host, args.port, args.workers, args.config)


def _clients(command: str, name: str, path: Path, scopes: list[str]) -> int:
    try:
        if command == "add":
            secret = add_client(path, name, scopes)
            print(f"added client {name!r} to {path} with scopes {', '.join(sorted(set(scopes)))}")
            print("its secret, shown this once (authsvc keeps only a hash):")
            print(secret)
        else:
            remove_client(path, name)
            print(f"removed client {name!r} from {path}")
    except ClientsFileError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return 1
    return 0


def _generate_keys(alg: str, out: Path) -> int:
    if out.exists():
        print(f"authsvc: {out} exists; not overwriting a key set", file=sys.stderr)
        return 1
    write_private_jwks(out, generate_jwks(alg))
    print(f"wrote a private {alg} JWK Set to {out} (mode 0600)")
    return 0


def _serve(host: str, port: int, workers: int, config: Path | None) -> int:
    try:
        settings = load_settings(os.environ, config)
        if workers < 1:
            raise SettingsError("--workers: must be at least 1")
        if settings.embedded and workers > 1:
            raise SettingsError(
                "--workers: the embedded storage lives in one process; "
                "set AUTHSVC_REDIS_URL to run several workers"
            )
        logs.configure(settings.log_level, settings.log_format)
        load_keyring(settings)  # fail now, and create the host's key set before forking
        load_clients(settings)
    except (SettingsError, KeySetError, ClientsFileError) as exc:
        print(f"authsvc: configuration error: {exc}", file=sys.stderr)
        return 2
    for warning in risky(settings):
        log.warning(warning)
    if os.environ.get(MULTIPROC_DIR):
        _forget_metrics_of_earlier_runs(Path(os.environ[MULTIPROC_DIR]))
    if workers == 1:
        _run_worker(settings, host, port, reuse_port=False)
        return 0
    return _supervise(settings, host, port, workers)


def _run_worker(settings: Settings, host: str, port: int, *, reuse_port: bool) -> None:
    def listening(*_: object) -> None:  # run_app calls this once its socket is bound
        log.info("listening", extra={"host": host, "port": port, "pid": os.getpid()})

    web.run_app(
        create_app(settings),
        host=host,
        port=port,
        reuse_port=reuse_port,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
        print=listening,
        loop=new_event_loop(),
        **HANDLER_ARGS,
    )
    log.info("stopped", extra={"pid": os.getpid()})


def _worker_main(settings: Settings, host: str, port: int) -> None:
    logs.configure(settings.log_level, settings.log_format)
    _run_worker(settings, host, port, reuse_port=True)


def _supervise(settings: Settings, host: str, port: int, workers: int) -> int:
    """Run `workers` processes on one port (SO_REUSEPORT) that share their metrics;
    forward SIGTERM/SIGINT to them."""
    given = os.environ.get(MULTIPROC_DIR)
    own_dir = not given
    metrics_dir = Path(given or tempfile.mkdtemp(prefix="authsvc-metrics-"))
    try:
        os.environ[MULTIPROC_DIR] = str(metrics_dir)  # the workers inherit it
        log.info("worker metrics in %s", metrics_dir)
        return _run_workers(settings, host, port, workers)
    finally:
        if own_dir:
            del os.environ[MULTIPROC_DIR]
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _forget_metrics_of_earlier_runs(directory: Path) -> None:
    # A directory given in PROMETHEUS_MULTIPROC_DIR: the files an earlier run left there
    # would be counted again. Only prometheus_client's own files are removed.
    for kind in ("counter", "gauge_*", "histogram", "summary"):
        for stale in directory.glob(f"{kind}_*.db"):
            with contextlib.suppress(OSError):
                stale.unlink()


def _run_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_worker_main, args=(settings, host, port), name=f"authsvc-{i}")
        for i in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.start()
    log.info("supervising workers", extra={"workers": workers, "port": port})
    status = 0
    running = {child.sentinel: child for child in children}
    while running:
        for sentinel in connection.wait(list(running)):
            child = running.pop(int(sentinel))  # type: ignore[arg-type]
            child.join()
            if child.exitcode != 0 and not stopping:
                log.error("worker exited", extra={"worker": child.name, "exitcode": child.exitcode})
                status = 1
                stop(signal.SIGTERM, None)
    return status
