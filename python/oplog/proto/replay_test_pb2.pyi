from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TestDocument(_message.Message):
    __slots__ = ("id", "title", "body", "updated", "count", "note", "flag", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: int
    title: str
    body: bytes
    updated: _timestamp_pb2.Timestamp
    count: int
    note: _wrappers_pb2.StringValue
    flag: bool
    score: float
    def __init__(self, id: _Optional[int] = ..., title: _Optional[str] = ..., body: _Optional[bytes] = ..., updated: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., count: _Optional[int] = ..., note: _Optional[_Union[_wrappers_pb2.StringValue, _Mapping]] = ..., flag: bool = ..., score: _Optional[float] = ...) -> None: ...
