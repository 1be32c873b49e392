from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BlobInfo(_message.Message):
    __slots__ = ("ciphertext", "iv", "hmac", "wrapped", "key_info", "value_path", "plaintext", "client_data")
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    IV_FIELD_NUMBER: _ClassVar[int]
    HMAC_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_FIELD_NUMBER: _ClassVar[int]
    KEY_INFO_FIELD_NUMBER: _ClassVar[int]
    VALUE_PATH_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_DATA_FIELD_NUMBER: _ClassVar[int]
    ciphertext: bytes
    iv: bytes
    hmac: bytes
    wrapped: bool
    key_info: KeyInfo
    value_path: str
    plaintext: bytes
    client_data: _struct_pb2.Struct
    def __init__(self, ciphertext: _Optional[bytes] = ..., iv: _Optional[bytes] = ..., hmac: _Optional[bytes] = ..., wrapped: bool = ..., key_info: _Optional[_Union[KeyInfo, _Mapping]] = ..., value_path: _Optional[str] = ..., plaintext: _Optional[bytes] = ..., client_data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = ("mechanism", "hmac_mechanism", "key_id", "hmac_key_id", "wrapped_key", "flags")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    HMAC_MECHANISM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HMAC_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    WRAPPED_KEY_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    mechanism: int
    hmac_mechanism: int
    key_id: str
    hmac_key_id: str
    wrapped_key: bytes
    flags: int
    def __init__(self, mechanism: _Optional[int] = ..., hmac_mechanism: _Optional[int] = ..., key_id: _Optional[str] = ..., hmac_key_id: _Optional[str] = ..., wrapped_key: _Optional[bytes] = ..., flags: _Optional[int] = ...) -> None: ...
