"""pytest fixture: a real presenced on an ephemeral loopback port.

Used by clients/python/tests and tests/grpcurl (their conftest.py imports the
fixture). The binary comes from $PRESENCED_BIN (scripts/lib.sh sets it). The
server is started once per test session, stopped by PID at the end, and the
teardown fails the run if it died or logged a panic while the tests ran.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest


@dataclass(frozen=True)
class Presenced:
    """A running server: `addr` is what clients dial (`127.0.0.1:PORT`)."""

    addr: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _free_port() -> int:
    """A port free on 127.0.0.1 now, below Linux's ephemeral range (32768 and
    up), so that no outgoing connection is given it before presenced binds it
    (the Rust tests do the same)."""
    for _ in range(1000):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999 on 127.0.0.1")


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"presenced exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"presenced did not listen on 127.0.0.1:{port} within {timeout} s")


def start_presenced(log_dir: Path, *extra_args: str) -> Presenced:
    binary = os.environ.get("PRESENCED_BIN", "")
    if not binary or not os.access(binary, os.X_OK):
        raise RuntimeError(f"PRESENCED_BIN={binary!r} is not an executable presenced binary")
    port = _free_port()
    log_path = log_dir / f"presenced-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{port}", *extra_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_listening(port, proc, log_path)
    except BaseException:
        stop_presenced(proc)
        raise
    return Presenced(addr=f"127.0.0.1:{port}", port=port, proc=proc, log_path=log_path)


def stop_presenced(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def presenced() -> Iterator[Presenced]:
    log_dir = Path(os.environ.get("PRESENCED_TEST_LOG_DIR") or tempfile.mkdtemp(prefix="presenced-test-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    server = start_presenced(log_dir)
    try:
        yield server
        died = server.proc.poll()
        assert died is None, f"presenced died during the tests (exit {died}):\n{server.log()}"
    finally:
        stop_presenced(server.proc)
    assert "panicked" not in server.log(), f"presenced panicked:\n{server.log()}"
