#!/usr/bin/env python3
"""Join a room, keep the session alive, and print the room as it changes.

    python heartbeat_and_watch.py --addr localhost:50051 --room chat:42 --user alice

Sends a heartbeat every --interval seconds from a background thread, prints
one line per room snapshot (the first at once, then one per join, leave or
data change), and on exit (Ctrl-C, SIGTERM, or after --snapshots N)
disconnects the session so the others see the user leave at once rather than
at expiry.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid

import grpc
from google.protobuf.duration_pb2 import Duration

from presenced.v1 import presence_pb2 as pb
from presenced.v1 import presence_pb2_grpc as rpc


def describe(snapshot: pb.RoomSnapshot) -> str:
    """One line: version, counts, then users (online ones marked with *)."""
    users = []
    for user in snapshot.users:
        if user.online:
            users.append(f"{user.user_id}*")
        else:
            left = user.last_disconnected.ToDatetime().strftime("%H:%M:%S")
            users.append(f"{user.user_id} (left {left})")
    return (
        f"v{snapshot.version} {snapshot.room_id}: {snapshot.online_count} online of "
        f"{snapshot.total_count}: {', '.join(users) or '(empty)'}"
    )


def keep_alive(stub: rpc.PresenceServiceStub, request: pb.HeartbeatRequest, every: float, stop: threading.Event) -> None:
    while not stop.wait(every):
        try:
            stub.Heartbeat(request, timeout=10)
        except grpc.RpcError as err:
            print(f"heartbeat failed: {err.code().name}: {err.details()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addr", default="localhost:50051", help="presenced address (host:port)")
    parser.add_argument("--room", default="chat:42")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--interval", type=int, default=10, help="heartbeat interval, seconds (1..600)")
    parser.add_argument("--snapshots", type=int, default=0, help="exit after this many snapshots (0: never)")
    args = parser.parse_args(argv)

    with grpc.insecure_channel(args.addr) as channel:
        stub = rpc.PresenceServiceStub(channel)
        heartbeat = pb.HeartbeatRequest(
            room_id=args.room,
            user_id=args.user,
            session_id=str(uuid.uuid4()),  # one per process, like one per browser tab
            interval=Duration(seconds=args.interval),
        )
        tokens = stub.Heartbeat(heartbeat, timeout=10)
        stop = threading.Event()
        threading.Thread(target=keep_alive, args=(stub, heartbeat, args.interval, stop), daemon=True).start()

        watch = stub.WatchRoom(pb.WatchRoomRequest(room_token=tokens.room_token))
        # Ctrl-C (or SIGTERM) ends the watch; a blocked read would not see a
        # KeyboardInterrupt, so cancelling the call is what wakes it up.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: watch.cancel())
        seen = 0
        try:
            for update in watch:
                print(describe(update.snapshot), flush=True)
                seen += 1
                if seen == args.snapshots:
                    break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                raise
        finally:
            stop.set()
            watch.cancel()
            stub.Disconnect(pb.DisconnectRequest(session_token=tokens.session_token), timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
