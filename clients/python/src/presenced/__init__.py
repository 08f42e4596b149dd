"""Python client for presenced, the real-time user presence service.

The API is `presence.v1` (proto/presence/v1/presence.proto), generated into
`presenced.v1`:

    import grpc
    from presenced.v1 import presence_pb2 as pb, presence_pb2_grpc as rpc

    stub = rpc.PresenceServiceStub(grpc.insecure_channel("localhost:50051"))
    tokens = stub.Heartbeat(pb.HeartbeatRequest(room_id="chat:42", user_id="alice",
                                                session_id="tab-1", interval=interval))

Messages are typed (`.pyi`), and so are the stubs. See examples/ for a
heartbeat-and-watch loop.
"""

from presenced.v1 import presence_pb2, presence_pb2_grpc

__all__ = ["presence_pb2", "presence_pb2_grpc"]
__version__ = "0.1.0"
