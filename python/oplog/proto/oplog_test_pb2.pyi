from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class TestUser(_message.Message):
    __slots__ = ("id", "name", "phone_number", "email", "table", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHONE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    phone_number: str
    email: str
    table: str
    version: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., phone_number: _Optional[str] = ..., email: _Optional[str] = ..., table: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class TestCar(_message.Message):
    __slots__ = ("id", "model", "mpg", "table")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MPG_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    id: int
    model: str
    mpg: int
    table: str
    def __init__(self, id: _Optional[int] = ..., model: _Optional[str] = ..., mpg: _Optional[int] = ..., table: _Optional[str] = ...) -> None: ...

class TestRental(_message.Message):
    __slots__ = ("user_id", "car_id", "table")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CAR_ID_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    user_id: int
    car_id: int
    table: str
    def __init__(self, user_id: _Optional[int] = ..., car_id: _Optional[int] = ..., table: _Optional[str] = ...) -> None: ...
