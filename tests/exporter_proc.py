"""Run ``sni-exporter serve`` as a user would: a process, scraped over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self, TypeVar

from prometheus_client.parser import text_string_to_metric_families

EXPORTER = str(Path(sys.executable).with_name("sni-exporter"))
T = TypeVar("T")

Sample = tuple[str, dict[str, str], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 30.0, every: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)  # polling interval of a deadline loop, not a synchronisation
    msg = f"timed out after {timeout}s waiting for {what} (last: {last!r})"
    raise AssertionError(msg)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``sni-exporter ARGS...`` to completion."""
    return subprocess.run(
        [EXPORTER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Assert the bad-input contract (exit 2, one line on stderr, no traceback); return the line."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


class Exporter:
    """A running exporter.  Use as a context manager; it is stopped with SIGTERM."""

    def __init__(self, config_file: Path, *args: str, port: int | None = None) -> None:
        self.config_file = config_file
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = config_file.with_suffix(f".{self.port}.log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                EXPORTER,
                "serve",
                "--config.file",
                str(config_file),
                "--web.listen-address",
                f"127.0.0.1:{self.port}",
                "--log.level",
                "debug",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def get(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(self.base + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            msg = f"exporter exited with {self.proc.returncode}:\n{self.log()}"
            raise AssertionError(msg)
        return True

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            self.alive()
            with contextlib.suppress(OSError):
                return self.get("/-/ready")[0] == 200
            return False

        wait_for("/-/ready", ready, timeout)

    def samples(self) -> list[Sample]:
        status, body, _ = self.get("/metrics")
        assert status == 200
        return [
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        ]

    def series(self, name: str, **match: str) -> dict[frozenset[tuple[str, str]], float]:
        """Samples of one metric whose labels include ``match``, keyed by their label set."""
        return {
            frozenset(labels.items()): value
            for n, labels, value in self.samples()
            if n == name and all(labels.get(k) == v for k, v in match.items())
        }

    def value(self, name: str, **match: str) -> float | None:
        found = list(self.series(name, **match).values())
        assert len(found) <= 1, f"{name}{match} matches {len(found)} series"
        return found[0] if found else None

    def by_target(self, name: str) -> dict[str, float]:
        return {dict(k)["target"]: v for k, v in self.series(name).items()}

    def reload(self) -> tuple[int, str]:
        status, body, _ = self.get("/-/reload", method="POST")
        return status, body.decode()


@contextlib.contextmanager
def running(config_file: Path, *args: str) -> Iterator[Exporter]:
    with Exporter(config_file, *args) as exporter:
        exporter.wait_ready()
        yield exporter
