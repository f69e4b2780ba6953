"""Run `authsvc serve` (or an example backend) as a real process, the way users and
deployment scripts do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import free_port

SERVE = ("-m", "authsvc", "serve")


class Service:
    """An `authsvc serve` process (or another `program` that takes --port and answers
    /healthz) on a free loopback port."""

    def __init__(
        self, env: dict[str, str], *args: str, log: Path, program: tuple[str, ...] = SERVE
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.name = " ".join(program)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSVC_")}
        full_env.update(env)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *program, "--port", str(self.port), *args],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until /healthz answers; fail with the log if the process dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise AssertionError(f"authsvc did not start:\n{self.log.read_text()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = 20.0) -> int:
        """The exit status; a process still running after `timeout` is killed and the test
        fails with the end of its log."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            tail = "\n".join(self.log.read_text().splitlines()[-30:])
            raise AssertionError(f"authsvc did not exit within {timeout} s:\n{tail}") from None

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:  # the test failed before stopping it
            self.process.kill()
            self.process.wait()
