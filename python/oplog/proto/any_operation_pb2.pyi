from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OpType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OP_TYPE_UNSPECIFIED: _ClassVar[OpType]
    OP_TYPE_CREATE: _ClassVar[OpType]
    OP_TYPE_UPDATE: _ClassVar[OpType]
    OP_TYPE_DELETE: _ClassVar[OpType]
    OP_TYPE_CREATE_ITEMS: _ClassVar[OpType]
    OP_TYPE_DELETE_ITEMS: _ClassVar[OpType]
OP_TYPE_UNSPECIFIED: OpType
OP_TYPE_CREATE: OpType
OP_TYPE_UPDATE: OpType
OP_TYPE_DELETE: OpType
OP_TYPE_CREATE_ITEMS: OpType
OP_TYPE_DELETE_ITEMS: OpType

class AnyOperation(_message.Message):
    __slots__ = ("type_name", "value", "operation_type", "field_mask", "null_mask", "options")
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_TYPE_FIELD_NUMBER: _ClassVar[int]
    FIELD_MASK_FIELD_NUMBER: _ClassVar[int]
    NULL_MASK_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    type_name: str
    value: bytes
    operation_type: OpType
    field_mask: _field_mask_pb2.FieldMask
    null_mask: _field_mask_pb2.FieldMask
    options: OperationOptions
    def __init__(self, type_name: _Optional[str] = ..., value: _Optional[bytes] = ..., operation_type: _Optional[_Union[OpType, str]] = ..., field_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., null_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., options: _Optional[_Union[OperationOptions, _Mapping]] = ...) -> None: ...

class OperationOptions(_message.Message):
    __slots__ = ("with_version", "with_skip_vet_for_write", "with_where_clause", "with_where_clause_args", "with_on_conflict")
    WITH_VERSION_FIELD_NUMBER: _ClassVar[int]
    WITH_SKIP_VET_FOR_WRITE_FIELD_NUMBER: _ClassVar[int]
    WITH_WHERE_CLAUSE_FIELD_NUMBER: _ClassVar[int]
    WITH_WHERE_CLAUSE_ARGS_FIELD_NUMBER: _ClassVar[int]
    WITH_ON_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    with_version: _wrappers_pb2.UInt32Value
    with_skip_vet_for_write: bool
    with_where_clause: str
    with_where_clause_args: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    with_on_conflict: WithOnConflict
    def __init__(self, with_version: _Optional[_Union[_wrappers_pb2.UInt32Value, _Mapping]] = ..., with_skip_vet_for_write: bool = ..., with_where_clause: _Optional[str] = ..., with_where_clause_args: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ..., with_on_conflict: _Optional[_Union[WithOnConflict, _Mapping]] = ...) -> None: ...

class WithOnConflict(_message.Message):
    __slots__ = ("constraint", "columns", "do_nothing", "update_all", "column_values")
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    DO_NOTHING_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ALL_FIELD_NUMBER: _ClassVar[int]
    COLUMN_VALUES_FIELD_NUMBER: _ClassVar[int]
    constraint: str
    columns: Columns
    do_nothing: bool
    update_all: bool
    column_values: ColumnValues
    def __init__(self, constraint: _Optional[str] = ..., columns: _Optional[_Union[Columns, _Mapping]] = ..., do_nothing: bool = ..., update_all: bool = ..., column_values: _Optional[_Union[ColumnValues, _Mapping]] = ...) -> None: ...

class Columns(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class ColumnValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[ColumnValue]
    def __init__(self, values: _Optional[_Iterable[_Union[ColumnValue, _Mapping]]] = ...) -> None: ...

class ColumnValue(_message.Message):
    __slots__ = ("name", "raw", "expr_value", "column")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    EXPR_VALUE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    name: str
    raw: _struct_pb2.Value
    expr_value: ExprValue
    column: Column
    def __init__(self, name: _Optional[str] = ..., raw: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., expr_value: _Optional[_Union[ExprValue, _Mapping]] = ..., column: _Optional[_Union[Column, _Mapping]] = ...) -> None: ...

class ExprValue(_message.Message):
    __slots__ = ("sql", "args")
    SQL_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    sql: str
    args: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Value]
    def __init__(self, sql: _Optional[str] = ..., args: _Optional[_Iterable[_Union[_struct_pb2.Value, _Mapping]]] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "table")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    table: str
    def __init__(self, name: _Optional[str] = ..., table: _Optional[str] = ...) -> None: ...
