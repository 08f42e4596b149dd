"""The generated Python client against a real presenced (see conftest.py).

Each test uses its own room (a fresh uuid), so they share one server.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from presenced.v1 import presence_pb2 as pb
from presenced.v1 import presence_pb2_grpc as rpc
from presenced_server import Presenced

CLIENT_DIR = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0


@pytest.fixture()
def stub(presenced: Presenced) -> Iterator[rpc.PresenceServiceStub]:
    with grpc.insecure_channel(presenced.addr) as channel:
        yield rpc.PresenceServiceStub(channel)


def room() -> str:
    return f"room:{uuid.uuid4()}"


def heartbeat(stub: rpc.PresenceServiceStub, room_id: str, user_id: str, session_id: str | None = None,
              interval_s: int = 30) -> pb.HeartbeatResponse:
    return stub.Heartbeat(
        pb.HeartbeatRequest(room_id=room_id, user_id=user_id, session_id=session_id or str(uuid.uuid4()),
                            interval=Duration(seconds=interval_s)),
        timeout=TIMEOUT,
    )


def users(snapshot: pb.RoomSnapshot) -> list[tuple[str, bool]]:
    return [(u.user_id, u.online) for u in snapshot.users]


class Watch:
    """Reads a WatchRoom stream on a thread, so a test can wait with a timeout."""

    def __init__(self, stub: rpc.PresenceServiceStub, room_token: str) -> None:
        self.call = stub.WatchRoom(pb.WatchRoomRequest(room_token=room_token))
        self.snapshots: queue.Queue[pb.RoomSnapshot | BaseException] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for update in self.call:
                self.snapshots.put(update.snapshot)
        except BaseException as err:  # the stream's end (cancel) or failure
            self.snapshots.put(err)

    def next(self) -> pb.RoomSnapshot:
        item = self.snapshots.get(timeout=TIMEOUT)
        if isinstance(item, BaseException):
            raise item
        return item

    def until(self, want: list[tuple[str, bool]]) -> list[pb.RoomSnapshot]:
        """Snapshots up to and including the first whose users are `want`."""
        seen = []
        while True:
            snapshot = self.next()
            seen.append(snapshot)
            if users(snapshot) == want:
                return seen

    def close(self) -> None:
        self.call.cancel()


def test_heartbeat_returns_distinct_tokens(stub: rpc.PresenceServiceStub) -> None:
    tokens = heartbeat(stub, room(), "alice")
    assert tokens.room_token and tokens.session_token
    assert tokens.room_token != tokens.session_token


def test_list_orders_online_users_by_arrival(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    alice = heartbeat(stub, room_id, "alice")
    heartbeat(stub, room_id, "bob")
    heartbeat(stub, room_id, "alice")  # a second heartbeat does not reorder
    snapshot = stub.List(pb.ListRequest(room_token=alice.room_token), timeout=TIMEOUT).snapshot
    assert snapshot.room_id == room_id
    assert users(snapshot) == [("alice", True), ("bob", True)]
    assert (snapshot.online_count, snapshot.total_count) == (2, 2)
    assert snapshot.version > 0
    assert not snapshot.users[0].HasField("last_disconnected")


def test_list_limit_truncates_but_counts_everyone(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    tokens = [heartbeat(stub, room_id, f"user-{i}") for i in range(5)]
    snapshot = stub.List(pb.ListRequest(room_token=tokens[0].room_token, limit=2), timeout=TIMEOUT).snapshot
    assert users(snapshot) == [("user-0", True), ("user-1", True)]
    assert (snapshot.online_count, snapshot.total_count) == (5, 5)


def test_watch_sees_a_join_and_a_leave(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    alice = heartbeat(stub, room_id, "alice")
    watch = Watch(stub, alice.room_token)
    try:
        first = watch.next()  # the current snapshot, at once
        assert users(first) == [("alice", True)]

        bob = heartbeat(stub, room_id, "bob")
        joined = watch.until([("alice", True), ("bob", True)])[-1]
        assert (joined.online_count, joined.total_count) == (2, 2)

        before = time.time()
        stub.Disconnect(pb.DisconnectRequest(session_token=bob.session_token), timeout=TIMEOUT)
        left = watch.until([("alice", True), ("bob", False)])[-1]
        assert (left.online_count, left.total_count) == (1, 2)
        bob_entry = left.users[1]
        assert bob_entry.HasField("last_disconnected")
        assert abs(bob_entry.last_disconnected.ToDatetime().timestamp() - before) < 5

        assert first.version < joined.version < left.version
    finally:
        watch.close()


def test_watch_ignores_plain_heartbeats(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    session = str(uuid.uuid4())
    alice = heartbeat(stub, room_id, "alice", session)
    watch = Watch(stub, alice.room_token)
    try:
        first = watch.next()
        heartbeat(stub, room_id, "alice", session)  # changes nothing visible
        heartbeat(stub, room_id, "bob")  # a change, to flush anything pending
        nxt = watch.next()
        assert users(nxt) == [("alice", True), ("bob", True)], "a plain heartbeat produced a snapshot"
        assert nxt.version > first.version
    finally:
        watch.close()


def test_disconnect_is_idempotent_and_user_stays_listed(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    alice = heartbeat(stub, room_id, "alice")
    request = pb.DisconnectRequest(session_token=alice.session_token)
    stub.Disconnect(request, timeout=TIMEOUT)
    stub.Disconnect(request, timeout=TIMEOUT)  # again: still OK
    snapshot = stub.List(pb.ListRequest(room_token=alice.room_token), timeout=TIMEOUT).snapshot
    assert users(snapshot) == [("alice", False)]
    assert (snapshot.online_count, snapshot.total_count) == (0, 1)
    assert snapshot.users[0].HasField("last_disconnected")


def test_two_sessions_one_closed_still_online(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    tab1 = heartbeat(stub, room_id, "alice")
    heartbeat(stub, room_id, "alice")  # a second tab
    stub.Disconnect(pb.DisconnectRequest(session_token=tab1.session_token), timeout=TIMEOUT)
    snapshot = stub.List(pb.ListRequest(room_token=tab1.room_token), timeout=TIMEOUT).snapshot
    assert users(snapshot) == [("alice", True)]


def test_user_data_and_trusted_calls(stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    alice = heartbeat(stub, room_id, "alice")
    data = Struct()
    data.update({"typing": True, "color": "#ff0000"})
    stub.UpdateRoomUser(pb.UpdateRoomUserRequest(room_id=room_id, user_id="alice", data=data), timeout=TIMEOUT)
    listed = stub.ListRoom(pb.ListRoomRequest(room_id=room_id), timeout=TIMEOUT).snapshot
    assert dict(listed.users[0].data) == {"typing": True, "color": "#ff0000"}

    rooms = stub.ListUser(pb.ListUserRequest(user_id="alice"), timeout=TIMEOUT).rooms
    assert room_id in [r.room_id for r in rooms]

    stub.RemoveRoomUser(pb.RemoveRoomUserRequest(room_id=room_id, user_id="alice"), timeout=TIMEOUT)
    after = stub.List(pb.ListRequest(room_token=alice.room_token), timeout=TIMEOUT).snapshot
    assert (users(after), after.total_count) == ([], 0)

    heartbeat(stub, room_id, "bob")
    stub.RemoveRoom(pb.RemoveRoomRequest(room_id=room_id), timeout=TIMEOUT)
    gone = stub.ListRoom(pb.ListRoomRequest(room_id=room_id), timeout=TIMEOUT).snapshot
    assert (users(gone), gone.total_count) == ([], 0)


def test_errors_carry_precise_codes(stub: rpc.PresenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as bad_interval:
        heartbeat(stub, room(), "alice", interval_s=0)
    assert bad_interval.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "interval" in (bad_interval.value.details() or "")

    with pytest.raises(grpc.RpcError) as bad_token:
        stub.List(pb.ListRequest(room_token="not-a-token"), timeout=TIMEOUT)
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as unknown_user:
        stub.UpdateRoomUser(pb.UpdateRoomUserRequest(room_id=room(), user_id="nobody", data=Struct()),
                            timeout=TIMEOUT)
    assert unknown_user.value.code() == grpc.StatusCode.NOT_FOUND


def test_example_heartbeats_and_watches(presenced: Presenced, stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    example = subprocess.Popen(
        [sys.executable, str(CLIENT_DIR / "examples" / "heartbeat_and_watch.py"), "--addr", presenced.addr,
         "--room", room_id, "--user", "alice", "--interval", "5", "--snapshots", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert example.stdout is not None
        first = example.stdout.readline()  # blocks until the example watches
        assert f"{room_id}: 1 online of 1: alice*" in first, first
        heartbeat(stub, room_id, "bob")
        out, err = example.communicate(timeout=TIMEOUT)
        assert example.returncode == 0, err
        assert f"{room_id}: 2 online of 2: alice*, bob*" in out, out
    finally:
        if example.poll() is None:
            example.kill()
            example.wait()
    # The example disconnects its session on the way out.
    snapshot = stub.ListRoom(pb.ListRoomRequest(room_id=room_id), timeout=TIMEOUT).snapshot
    assert users(snapshot) == [("bob", True), ("alice", False)]


def test_example_disconnects_on_ctrl_c(presenced: Presenced, stub: rpc.PresenceServiceStub) -> None:
    room_id = room()
    example = subprocess.Popen(
        [sys.executable, str(CLIENT_DIR / "examples" / "heartbeat_and_watch.py"), "--addr", presenced.addr,
         "--room", room_id, "--user", "alice"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert example.stdout is not None
        assert "1 online of 1: alice*" in example.stdout.readline()
        example.send_signal(signal.SIGINT)
        _, err = example.communicate(timeout=TIMEOUT)
        assert example.returncode == 0, err
    finally:
        if example.poll() is None:
            example.kill()
            example.wait()
    snapshot = stub.ListRoom(pb.ListRoomRequest(room_id=room_id), timeout=TIMEOUT).snapshot
    assert users(snapshot) == [("alice", False)], "the example left its session open"


MISTYPED = """
from presenced.v1 import presence_pb2 as pb
request = pb.ListRequest(room_token="t", limit="ten")
count: str = request.limit
"""


def test_stubs_are_typed(tmp_path: Path) -> None:
    """mypy --strict accepts the example and refuses code that misuses the messages."""
    ok = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(CLIENT_DIR / "examples")],
                        capture_output=True, text=True, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "mistyped.py"
    bad.write_text(MISTYPED)
    refused = subprocess.run([sys.executable, "-m", "mypy", "--strict", str(bad)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout
    assert 'Argument "limit" to "ListRequest" has incompatible type "str"' in refused.stdout, refused.stdout
    assert "Incompatible types in assignment" in refused.stdout, refused.stdout
