"""The README's commands, run as written, the way a new user runs them.

- "Run it": the one command, from the repository root, until
  127.0.0.1:50051 answers a gRPC health check and serves a heartbeat.
- "Several instances": the two blocks as written (a redis-server on 6379,
  three presenced on 50051-50053, then the grpcurl story), checked against
  what the prose says the watch shows.
- "Test it": CI (.ci/run) runs exactly the README's test command.

The documented ports must be free: a test says so and fails if they are not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "grpcurl"))

from grpcurl_cli import call, complete_messages, run, users  # noqa: E402

README = REPO / "README.md"
BUILD_TIMEOUT = 1200.0  # a cold release build on 2 cores
INSTANCE_PORTS = (50051, 50052, 50053)
REDIS_PORT = 6379


def section_blocks(heading: str) -> list[str]:
    """The ```sh blocks of the README section under `heading` (a whole
    heading line, e.g. `## Run it`), up to the next heading of its level or
    above."""
    lines = README.read_text().splitlines()
    assert lines.count(heading) == 1, f"README.md: want one {heading!r} heading"
    level = len(heading) - len(heading.lstrip("#"))
    blocks: list[str] = []
    i = lines.index(heading) + 1
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level and not line.startswith("#!"):
            break
        if line.strip().startswith("```"):
            lang, body = line.strip()[3:].strip(), []
            i += 1
            while not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if lang in ("sh", "bash", "shell"):
                blocks.append("\n".join(body) + "\n")
        i += 1
    return blocks


def command_of(block: str) -> str:
    """The block's command, without a trailing `# comment`."""
    lines = [ln for ln in block.splitlines() if ln.strip()]
    assert len(lines) == 1, f"want a one-line command, got {block!r}"
    return lines[0].split(" #", 1)[0].strip()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def require_free(*ports: int) -> None:
    busy = [p for p in ports if not port_free(p)]
    assert not busy, f"127.0.0.1 ports {busy} are in use: the README's commands need them"


def user_env() -> dict[str, str]:
    """The environment of a fresh shell: no PRESENCE_* settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Ends the process group `proc` leads (what it started in the background too)."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; give the rest of the group the same time.
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def wait_serving(addr: str, procs: list[subprocess.Popen[bytes]], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"exited with {p.returncode} before serving:\n{log.read_text(errors='replace')[-4000:]}"
        if not port_free(int(addr.rsplit(":", 1)[1])):
            res = run(addr, "grpc.health.v1.Health/Check")
            if res.returncode == 0 and res.message().get("status") == "SERVING":
                return
        time.sleep(0.2)
    raise AssertionError(f"{addr} did not answer SERVING within {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")


def test_ci_runs_the_readme_test_command() -> None:
    [block] = section_blocks("## Test it")[:1]
    command = command_of(block)
    assert (REPO / command.split()[0]).is_file() and os.access(REPO / command.split()[0], os.X_OK), command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    steps = [ln.strip() for ln in ci
             if ln.strip() and not ln.lstrip().startswith("#")
             and not ln.startswith("set ") and not ln.startswith("cd ")]
    assert steps == [f"exec {command}"], f".ci/run runs {steps}, the README's test command is {command!r}"


def test_the_run_command_serves(tmp_path: Path) -> None:
    [block] = section_blocks("## Run it")[:1]
    command = command_of(block)
    assert command == "cargo run --release", command  # what the prose under it describes
    require_free(50051)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=REPO, env=user_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_serving("127.0.0.1:50051", [proc], log, BUILD_TIMEOUT)
        # The embedded store, no configuration: a heartbeat and its listing.
        tokens = call("127.0.0.1:50051", "Heartbeat",
                      {"room_id": "readme", "user_id": "ada", "session_id": "s1", "interval": "30s"})
        listed = call("127.0.0.1:50051", "List", {"room_token": tokens["roomToken"]})
        assert users(listed["snapshot"]) == [("ada", True)], listed
        text = log.read_text(errors="replace")
        assert "authentication is off (loopback only)" in text, "the README promises a warning that auth is off"
    finally:
        stop_group(proc)
    assert proc.returncode is not None


def test_several_instances_as_written(tmp_path: Path) -> None:
    blocks = section_blocks("### Several instances")
    assert len(blocks) == 2, f"want the start block and the grpcurl block, got {len(blocks)}"
    start, story = blocks
    binary = REPO / "target" / "release" / "presenced"
    assert binary.is_file(), "target/release/presenced: the README's run command builds it (the test before)"
    require_free(REDIS_PORT, *INSTANCE_PORTS)
    log = tmp_path / "instances.log"
    scratch = tmp_path / "terminal"
    scratch.mkdir()
    with open(log, "wb") as out:
        instances = subprocess.Popen(["bash", "-e", "-c", start], cwd=REPO, env=user_env(), stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    watch_out = tmp_path / "story.out"
    terminal: subprocess.Popen[bytes] | None = None
    try:
        for port in INSTANCE_PORTS:
            wait_serving(f"127.0.0.1:{port}", [], log, 60.0)
        with open(watch_out, "wb") as out:
            # The block leaves its WatchRoom running in the background, as a
            # terminal would; it writes to story.out until stopped.
            terminal = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", story], cwd=scratch, env=user_env(),
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        assert terminal.wait(timeout=60) == 0, watch_out.read_text()
        alice = (scratch / "alice.json").read_text()
        assert '"roomToken"' in alice and '"sessionToken"' in alice, alice

        # The watch (on the second instance) saw Alice, then Bob join through
        # the third. If Bob's heartbeat won the race with the subscription,
        # the first snapshot shows both at once.
        deadline = time.monotonic() + 20
        snapshots: list[dict] = []
        while time.monotonic() < deadline:
            text = watch_out.read_text(errors="replace")
            snapshots = [m["snapshot"] for m in complete_messages(text) if "snapshot" in m]
            if snapshots and users(snapshots[-1]) == [("alice", True), ("bob", True)]:
                break
            time.sleep(0.1)
        story_seen = [users(s) for s in snapshots]
        assert story_seen and story_seen[-1] == [("alice", True), ("bob", True)], (story_seen, watch_out.read_text())
        assert story_seen[0] in ([("alice", True)], [("alice", True), ("bob", True)]), story_seen
        assert len(story_seen) <= 2, story_seen
        assert all(s["roomId"] == "chat:42" for s in snapshots)
        # The instances shared one token key through Redis, and said so.
        assert "shared by every instance through the store" in log.read_text(errors="replace")
    finally:
        if terminal is not None:
            stop_group(terminal)
        stop_group(instances)
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"],
                       capture_output=True, timeout=10)
    assert port_free(REDIS_PORT), "the README's redis-server is still running"
    for port in INSTANCE_PORTS:
        assert port_free(port), f"an instance still listens on {port}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
