from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "session_id", "interval")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    session_id: str
    interval: _duration_pb2.Duration
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ..., interval: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("room_token", "session_token")
    ROOM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    room_token: str
    session_token: str
    def __init__(self, room_token: _Optional[str] = ..., session_token: _Optional[str] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("session_token",)
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    session_token: str
    def __init__(self, session_token: _Optional[str] = ...) -> None: ...

class DisconnectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("room_token", "limit")
    ROOM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    room_token: str
    limit: int
    def __init__(self, room_token: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: RoomSnapshot
    def __init__(self, snapshot: _Optional[_Union[RoomSnapshot, _Mapping]] = ...) -> None: ...

class WatchRoomRequest(_message.Message):
    __slots__ = ("room_token", "limit")
    ROOM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    room_token: str
    limit: int
    def __init__(self, room_token: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class WatchRoomResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: RoomSnapshot
    def __init__(self, snapshot: _Optional[_Union[RoomSnapshot, _Mapping]] = ...) -> None: ...

class ListUserRequest(_message.Message):
    __slots__ = ("user_id", "online_only", "limit")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    online_only: bool
    limit: int
    def __init__(self, user_id: _Optional[str] = ..., online_only: bool = ..., limit: _Optional[int] = ...) -> None: ...

class ListUserResponse(_message.Message):
    __slots__ = ("rooms",)
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[RoomPresence]
    def __init__(self, rooms: _Optional[_Iterable[_Union[RoomPresence, _Mapping]]] = ...) -> None: ...

class UpdateRoomUserRequest(_message.Message):
    __slots__ = ("room_id", "user_id", "data")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    data: _struct_pb2.Struct
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class UpdateRoomUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoomRequest(_message.Message):
    __slots__ = ("room_id", "online_only", "limit")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    online_only: bool
    limit: int
    def __init__(self, room_id: _Optional[str] = ..., online_only: bool = ..., limit: _Optional[int] = ...) -> None: ...

class ListRoomResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: RoomSnapshot
    def __init__(self, snapshot: _Optional[_Union[RoomSnapshot, _Mapping]] = ...) -> None: ...

class RemoveRoomUserRequest(_message.Message):
    __slots__ = ("room_id", "user_id")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    user_id: str
    def __init__(self, room_id: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...

class RemoveRoomUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveRoomRequest(_message.Message):
    __slots__ = ("room_id",)
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    def __init__(self, room_id: _Optional[str] = ...) -> None: ...

class RemoveRoomResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoomSnapshot(_message.Message):
    __slots__ = ("room_id", "users", "online_count", "total_count", "version")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    ONLINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    users: _containers.RepeatedCompositeFieldContainer[UserPresence]
    online_count: int
    total_count: int
    version: int
    def __init__(self, room_id: _Optional[str] = ..., users: _Optional[_Iterable[_Union[UserPresence, _Mapping]]] = ..., online_count: _Optional[int] = ..., total_count: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class UserPresence(_message.Message):
    __slots__ = ("user_id", "online", "last_disconnected", "data")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    online: bool
    last_disconnected: _timestamp_pb2.Timestamp
    data: _struct_pb2.Struct
    def __init__(self, user_id: _Optional[str] = ..., online: bool = ..., last_disconnected: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RoomPresence(_message.Message):
    __slots__ = ("room_id", "online", "last_disconnected")
    ROOM_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_DISCONNECTED_FIELD_NUMBER: _ClassVar[int]
    room_id: str
    online: bool
    last_disconnected: _timestamp_pb2.Timestamp
    def __init__(self, room_id: _Optional[str] = ..., online: bool = ..., last_disconnected: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
