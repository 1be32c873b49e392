"""Hypothesis strategies for operations over the vectors' test messages."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import StringValue
from hypothesis import strategies as st

import oplog
from oplog.proto.any_operation_pb2 import (
    Column,
    Columns,
    ColumnValue,
    ColumnValues,
    ExprValue,
    WithOnConflict,
)
from oplog.proto.oplog_test_pb2 import TestCar, TestRental, TestUser
from oplog.proto.replay_test_pb2 import TestDocument

_u32 = st.integers(0, 2**32 - 1)
_i32 = st.integers(-(2**31), 2**31 - 1)
_text = st.text(max_size=40)

users = st.builds(
    TestUser,
    id=_u32,
    name=_text,
    phone_number=_text,
    email=_text,
    table=_text,
    version=_u32,
)
cars = st.builds(TestCar, id=_u32, model=_text, mpg=_i32, table=_text)
rentals = st.builds(TestRental, user_id=_u32, car_id=_u32, table=_text)
messages = st.one_of(
    users.map(lambda m: ("user", m)),
    cars.map(lambda m: ("car", m)),
    rentals.map(lambda m: ("rental", m)),
)

_paths = st.lists(st.text(min_size=1, max_size=12), max_size=4)

options = st.builds(
    oplog.OperationOptions,
    with_skip_vet_for_write=st.booleans(),
    with_where_clause=_text,
    with_on_conflict=st.one_of(
        st.builds(WithOnConflict, constraint=_text, do_nothing=st.booleans()),
        st.builds(
            WithOnConflict,
            columns=st.builds(Columns, names=st.lists(_text, max_size=3)),
            column_values=st.builds(
                ColumnValues,
                values=st.lists(
                    st.one_of(
                        st.builds(ColumnValue, name=_text, column=st.builds(Column, name=_text)),
                        st.builds(
                            ColumnValue, name=_text, expr_value=st.builds(ExprValue, sql=_text)
                        ),
                    ),
                    max_size=2,
                ),
            ),
        ),
    ),
)


@st.composite
def operations(draw: st.DrawFn, version: str = "v2") -> oplog.Operation:
    """A valid operation for a queue of `version`."""
    type_name, message = draw(messages)
    op_type = draw(st.sampled_from(list(oplog.OpType)[1:]))
    field_mask = tuple(draw(_paths))
    null_paths: tuple[str, ...] = ()
    opts = None
    if version == "v2":
        lowered = {p.lower() for p in field_mask}
        null_paths = tuple(p for p in draw(_paths) if p.lower() not in lowered)
        opts = draw(st.none() | options)
    if op_type == oplog.OpType.UPDATE and not field_mask and not null_paths:
        field_mask = ("name",)
    return oplog.Operation(message, type_name, op_type, field_mask, null_paths, opts)


# Documents: every mapped kind of column (text, bytes, bool, double, int64, a wrapper, a
# timestamp), set or unset, with unicode; storable text only (no NUL, no lone surrogate).
storable_text = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20
)
_stamps = st.datetimes(
    min_value=dt.datetime(1900, 1, 1),
    max_value=dt.datetime(2200, 1, 1),
    timezones=st.just(dt.timezone.utc),
)


@st.composite
def documents(draw: st.DrawFn) -> TestDocument:
    """A document with any mix of set, unset (NULL) and unicode/binary fields."""
    doc = TestDocument(
        body=draw(st.binary(max_size=24)),
        flag=draw(st.booleans()),
        score=draw(st.floats(allow_nan=False, width=64)),
    )
    if draw(st.booleans()):
        doc.title = draw(storable_text)
    if draw(st.booleans()):
        doc.count = draw(st.integers(-(2**63), 2**63 - 1))
    if draw(st.booleans()):
        doc.note.CopyFrom(StringValue(value=draw(storable_text)))
    if draw(st.booleans()):
        stamp = Timestamp()
        stamp.FromDatetime(draw(_stamps))
        doc.updated.CopyFrom(stamp)
    return doc
