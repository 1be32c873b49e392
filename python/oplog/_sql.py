"""Every statement oplog runs on its own tables (``oplog_entry``, ``oplog_metadata``,
``oplog_ticket``, ``oplog_consumer``, ``oplog_schema_migrations``), in one place.

The migrations' DDL is in ``oplog/migrations``; statements on the caller's tables (the data an
operation changes) are composed per table by :mod:`oplog.mapping`.

Parameters are bound on the server (``%s``), and where their type is known and the value is
large or an array, in binary (``%b``). A redeem advances a ticket with :data:`ADVANCE_TICKET`
in every writer: it is the one place a ticket's version changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

# --- tickets ------------------------------------------------------------------------------------

ADVANCE_TICKET = "version = oplog_ticket.version + 1, update_time = current_timestamp"
"""The SET list of every redeem: the next version, and when it was taken."""

INIT_TICKET = (
    "insert into oplog_ticket (name, version) values (%s, 1) on conflict (name) do nothing"
)
"""Creates a ticket at version 1 unless it exists."""

TICKET = "select id, name, version from oplog_ticket where name = %s"
TICKET_FOR_UPDATE = TICKET + " for update"

REDEEM_TICKET_VERSION = f"update oplog_ticket set {ADVANCE_TICKET} where id = %s and version = %s"
"""Redeems a ticket from the version read (Ticketer.redeem): no row updated, a stale read."""

# --- one entry ----------------------------------------------------------------------------------

# Entry.write_entry_with and Oplog.write: redeem the ticket, insert the entry and its metadata,
# in one statement. Without the ticket nothing is inserted (the entry CTE selects from it), so
# a missing ticket writes nothing and burns no identity value. With a ticket version
# (Entry.write_entry_with) the redeem succeeds only from that version; without one (Oplog.write)
# it takes the current one, waiting for a concurrent writer at READ COMMITTED and failing with
# a serialization error above it. No row back means a stale version, or a ticket that does not
# exist yet.
#
# Chained (oplog.chain), the statement first advances the aggregate's head from the one the
# tag was computed on (`prev_tag`, sequence `chain_seq` - 1) and redeems the ticket only if it
# did: a head that moved meanwhile (or a missing ticket) changes nothing and returns no row, and
# the writer locks the head and tries again. At READ COMMITTED a concurrent writer of the head
# is waited for and its commit makes the check fail; above it, it is a serialization failure.
_WRITE_ENTRY = """
with {head}ticket as (
  update oplog_ticket set {advance}
  where name = %(ticket)b::text{version_check}{head_gate}
  returning id
), entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id{chain_columns})
  select %(version)b::text, %(aggregate_name)b::text, %(data)b, %(key_id)b::text{chain_values}
  from ticket
  returning id, create_time
){metadata}
select id, create_time from entry
"""
_TICKET_VERSION = (
    "\n    and (%(ticket_version)b::bigint is null or version = %(ticket_version)b::bigint)"
)
_ENTRY_METADATA = """, metadata as (
  insert into oplog_metadata (entry_id, key, value)
  select entry.id, m.key, m.value
  from entry, unnest(%(keys)b::text[], %(values)b::text[]) as m (key, value)
)"""
_ENTRY_HEAD = """head as (
  update oplog_chain_head
  set seq = %(chain_seq)b::bigint, tag = %(chain_tag)b::bytea, update_time = current_timestamp
  where aggregate_name = %(aggregate_name)b::text
    and seq = %(chain_seq)b::bigint - 1 and tag = %(prev_tag)b::bytea
    and exists (select from oplog_ticket where name = %(ticket)b::text)
  returning 1
), """


def _write_entry(*, ticket_version: bool, metadata: bool, chained: bool) -> str:
    return _WRITE_ENTRY.format(
        advance=ADVANCE_TICKET,
        version_check=_TICKET_VERSION if ticket_version else "",
        chain_columns=", chain_seq, chain_tag" if chained else "",
        chain_values=", %(chain_seq)b::bigint, %(chain_tag)b::bytea" if chained else "",
        metadata=_ENTRY_METADATA if metadata else "",
        head=_ENTRY_HEAD if chained else "",
        head_gate="\n    and exists (select from head)" if chained else "",
    )


WRITE_ENTRY = _write_entry(ticket_version=True, metadata=True, chained=False)
"""Entry.write_entry_with (the lower-level API: unchained)."""
WRITE_ENTRY_ALONE = _write_entry(ticket_version=False, metadata=False, chained=False)
"""Oplog.write of an entry without metadata, unchained: fewer parameters to adapt and send."""
WRITE_ENTRY_METADATA = _write_entry(ticket_version=False, metadata=True, chained=False)
WRITE_CHAINED = _write_entry(ticket_version=False, metadata=True, chained=True)
WRITE_CHAINED_ALONE = _write_entry(ticket_version=False, metadata=False, chained=True)

# Locks the heads of a write's aggregates (creating the missing ones), in name order so that
# two writers cannot deadlock on them, and returns each one's (name, sequence, tag). The lock
# holds until the transaction ends: the next writer of an aggregate chains onto this one's
# entries once they are committed.
LOCK_HEADS = """
insert into oplog_chain_head (aggregate_name)
select a from unnest(%s::text[]) as a order by a
on conflict (aggregate_name) do update set seq = oplog_chain_head.seq
returning aggregate_name, seq, tag
"""
HEADS = "select aggregate_name, seq, tag from oplog_chain_head"

# The chain values of the entries with the given ids (for a replica's copy of the log).
CHAIN_OF = "select id, chain_seq, chain_tag from oplog_entry where id = any(%s)"


# Every entry for verification with its metadata (as two arrays, or NULLs), each aggregate's
# chain in sequence order, the unchained last.
VERIFY_ENTRIES = """
select e.id, e.aggregate_name, e.key_id, e.data, e.chain_seq, e.chain_tag, m.keys, m.vals
from oplog_entry e
left join lateral (
  select array_agg(key) as keys, array_agg(value) as vals
  from oplog_metadata where entry_id = e.id
) as m on true
order by e.aggregate_name, e.chain_seq nulls last, e.id
"""

# Oplog.apply: after the data CTEs (each changes nothing unless `ticket` returned a row), the
# entry and its metadata, as in WRITE_ENTRY; positional parameters, after the data's.
APPLY_TICKET = f"""ticket as (
  update oplog_ticket set {ADVANCE_TICKET}
  where name = %b::text returning id
)""".encode()
APPLY_ENTRY = b""", entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id)
  select %b::text, %b::text, %b, %b::text from ticket
  returning id, create_time
)"""
APPLY_CHAINED_TICKET = f"""head as (
  update oplog_chain_head set seq = %b::bigint, tag = %b::bytea, update_time = current_timestamp
  where aggregate_name = %b::text and seq = %b::bigint - 1 and tag = %b::bytea
    and exists (select from oplog_ticket where name = %b::text)
  returning 1
), ticket as (
  update oplog_ticket set {ADVANCE_TICKET}
  where name = %b::text and exists (select from head) returning id
)""".encode()
"""APPLY_TICKET for a chained entry: the head advanced first, as in WRITE_CHAINED."""
APPLY_CHAINED_ENTRY = b""", entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id, chain_seq, chain_tag)
  select %b::text, %b::text, %b, %b::text, %b::bigint, %b::bytea from ticket
  returning id, create_time
)"""
APPLY_METADATA = b""", metadata as (
  insert into oplog_metadata (entry_id, key, value)
  select entry.id, m.key, m.value
  from entry, unnest(%b::text[], %b::text[]) as m (key, value)
)"""
APPLY_RESULT = b"""
select id, create_time from entry"""

# --- a batch ------------------------------------------------------------------------------------

# A batch in one round trip: redeem each of the batch's tickets once, in name order, creating
# the missing ones on the way (a new ticket starts at version 1, so redeemed it is 2); then
# insert the entries in input order (so their ids ascend with it) and their metadata. The upsert
# takes each ticket's row lock (or, for a new one, its key) in name order and nothing else
# first, so two batches cannot deadlock, with new tickets or existing ones. Parameters are
# binary, and the large arrays arrive packed by the Rust core (see pgarray.py): dumping them
# element by element cost a fifth of a batch.
_BATCH_TICKETS = f"""
with redeemed as (
  insert into oplog_ticket (name, version)
  select t.name, 2 from unnest(%(tickets)b::text[]) as t (name) order by t.name
  on conflict (name) do update set {ADVANCE_TICKET}
  returning id
), """
# The metadata of a batch's entries: `meta_ord` numbers each row's entry in input order, and the
# entries' ids ascend with it.
_NUMBERED_METADATA = """), numbered as (
  select id, row_number() over (order by id) as ord from entry
), metadata as (
  insert into oplog_metadata (entry_id, key, value)
  select n.id, m.key, m.value
  from unnest(%(meta_ord)b::bigint[], %(keys)b::text[], %(values)b::text[]) as m (ord, key, value)
  join numbered n on n.ord = m.ord
)"""
_BATCH_ENTRIES = """entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id{chain_columns})
  select %(version)b::text, u.aggregate_name, u.data, %(key_id)b::text{chain_values}
  from unnest(%(aggregates)b::text[], %(datas)b::bytea[]{chain_arrays})
    with ordinality as u (aggregate_name, data{chain_names}, ord)
  where {gate}
  order by u.ord
  returning id
{numbered_metadata}{head}
select id from numbered order by ord
"""
# Chained, each chunk advances the heads of its aggregates to their last entry in it.
_BATCH_HEADS = """, head as (
  update oplog_chain_head h
  set seq = u.seq, tag = u.tag, update_time = current_timestamp
  from unnest(%(head_names)b::text[], %(head_seqs)b::bigint[], %(head_tags)b::bytea[])
    as u (name, seq, tag)
  where h.aggregate_name = u.name and h.seq < u.seq and exists (select from entry)
)"""


def _batch_entries(gate: str, *, chained: bool, heads: bool = True) -> str:
    return _BATCH_ENTRIES.format(
        gate=gate,
        chain_columns=", chain_seq, chain_tag" if chained else "",
        chain_values=", u.chain_seq, u.chain_tag" if chained else "",
        chain_arrays=", %(seqs)b::bigint[], %(tags)b::bytea[]" if chained else "",
        chain_names=", chain_seq, chain_tag" if chained else "",
        head=_BATCH_HEADS if chained and heads else "",
        numbered_metadata=_NUMBERED_METADATA,
    )


_REDEEMED_ALL = "(select count(*) from redeemed) = %(ticket_count)b::bigint"

# A large batch goes in chunks through one pipeline (one round trip still), so that the
# client encrypts a chunk while the server inserts the one before. The first chunk redeems
# every ticket of the batch and, only then, sets a transaction-local token that the other
# chunks require: they insert nothing unless this batch's redeem succeeded in this transaction.
_ARMED = """armed as (
  select set_config('oplog.batch', %(token)b::text, true)
  where (select count(*) from redeemed) = %(ticket_count)b::bigint
), """
_TOKEN_GATE = "current_setting('oplog.batch', true) = %(token)b::text"

WRITE_MANY = _BATCH_TICKETS + _batch_entries(_REDEEMED_ALL, chained=False)
WRITE_MANY_FIRST = (
    _BATCH_TICKETS + _ARMED + _batch_entries("exists (select from armed)", chained=False)
)
WRITE_MANY_NEXT = "with " + _batch_entries(_TOKEN_GATE, chained=False)
CHAINED_MANY = _BATCH_TICKETS + _batch_entries(_REDEEMED_ALL, chained=True)
# A chunked batch advances the heads once, in its last chunk, to their values after the batch
# (its chunks commit or fail together).
CHAINED_MANY_FIRST = (
    _BATCH_TICKETS
    + _ARMED
    + _batch_entries("exists (select from armed)", chained=True, heads=False)
)
CHAINED_MANY_NEXT = "with " + _batch_entries(_TOKEN_GATE, chained=True, heads=False)
CHAINED_MANY_LAST = "with " + _batch_entries(_TOKEN_GATE, chained=True)

# A replica's copy of a page of entries (Oplog.replicate with copy_log): the blobs, key ids and
# chain values as the source stores them, the metadata, and each aggregate's head advanced to
# the page's last chained entry. Ids and times are the replica's own.
COPY_ENTRIES = f"""
with entry as (
  insert into oplog_entry (version, aggregate_name, data, key_id, chain_seq, chain_tag)
  select u.version, u.aggregate_name, u.data, u.key_id, u.chain_seq::bigint, u.chain_tag
  from unnest(%(versions)b::text[], %(aggregates)b::text[], %(datas)b::bytea[],
              %(key_ids)b::text[], %(seqs)b::text[], %(tags)b::bytea[])
    with ordinality as u (version, aggregate_name, data, key_id, chain_seq, chain_tag, ord)
  order by u.ord
  returning id
{_NUMBERED_METADATA}, head as (
  insert into oplog_chain_head as h (aggregate_name, seq, tag)
  select * from unnest(%(head_names)b::text[], %(head_seqs)b::bigint[], %(head_tags)b::bytea[])
  on conflict (aggregate_name) do update
  set seq = excluded.seq, tag = excluded.tag, update_time = current_timestamp
  where h.seq < excluded.seq
)
select count(*) from entry
"""

# --- reading ------------------------------------------------------------------------------------

_ENTRY_COLUMNS = "id, create_time, version, aggregate_name, data, key_id"
"""The columns of a stored entry, in the order Entry.from_row's callers unpack them."""
_PAGE_COLUMNS = {
    True: "id, create_time::text, version, aggregate_name, data, key_id",
    False: "id, null::text, version, aggregate_name, data, key_id",
}
"""The same for a page of a read or a tail: the time as text, which the entry loads when it
is asked for (see entry.time_loader); or, for entries that are only applied (a replicator's,
a replay's), no time at all: formatting it cost the server a sixth of a page's query."""

_READ_PAGE = """
select {columns} from oplog_entry
where id > %s and (%s::text is null or aggregate_name = %s)
order by id limit %s
"""
READ_PAGE = {timed: _READ_PAGE.format(columns=c) for timed, c in _PAGE_COLUMNS.items()}
"""A page of a read, by whether the entries' times are read."""

ENTRY_METADATA = """
select entry_id, key, value from oplog_metadata where entry_id = any(%b::int8[]) order by id
"""
"""The metadata rows of the entries with the given ids (for a page, or an inspection): the
ids as a packed ``pgarray.Int8Array`` (psycopg dumps a list element by element)."""

ENTRIES_BY_ID = f"select {_ENTRY_COLUMNS} from oplog_entry where id = any(%s) order by id"
ALL_ENTRIES = f"select {_ENTRY_COLUMNS} from oplog_entry order by id"
COUNT_ENTRIES = "select count(*) from oplog_entry"

# --- following ----------------------------------------------------------------------------------

# The current snapshot, as text. In autocommit (or a fresh transaction at READ COMMITTED) it is
# the snapshot of this statement.
SNAPSHOT = "select pg_current_snapshot()::text"

# One page of a poll: entries of transactions `reading` sees and `seen` does not, in id order.
# `reading` is passed explicitly, so a page can be read in any later transaction and still
# selects the same entries. A partition (k of n) keeps the entries whose aggregate name's MD5
# starts with 32 bits that are k modulo n (checkpoint.partition_of computes the same).
#
# Two forms. The first page of a poll (TAIL_PAGE) also bounds the transaction ids, so that the
# few entries of recent transactions are found by the xact_id index when following. The pages
# after it (TAIL_PAGE_CONTINUED: the poll had more than a page) walk the primary key from where
# the last page ended and stop at the limit (run with sorting disabled: _db.execute_in_order).
# Left to itself, a planner without statistics for a burst just written (autovacuum has not
# analyzed it yet) reads every entry left in the poll for each page and sorts them, which makes
# catching up quadratic (20,000 entries in pages of 500: 410,000 rows read instead of 40,000,
# tests/test_checkpoint.py). The bounds are implied by the visibility tests (an id below
# `seen`'s xmin is visible in it; one `reading` sees is below its xmax), so both forms select
# the same entries. Never prepared: the best plan depends on the snapshots, and a generic plan
# sorts the whole range for every page.
_TAIL_PAGE = """
select {columns} from oplog_entry
where {bounds}not pg_visible_in_snapshot(xact_id, %(seen)s::pg_snapshot)
  and pg_visible_in_snapshot(xact_id, %(reading)s::pg_snapshot)
  and id > %(after)s
  and (%(parts)s::int = 1
       or mod(('x' || left(md5(aggregate_name), 8))::bit(32)::bigint, %(parts)s::int)
          = %(part)s::int)
order by id
limit %(limit)s
"""
_XACT_BOUNDS = """xact_id >= pg_snapshot_xmin(%(seen)s::pg_snapshot)
  and xact_id < pg_snapshot_xmax(%(reading)s::pg_snapshot)
  and """
TAIL_PAGE = {t: _TAIL_PAGE.format(columns=c, bounds=_XACT_BOUNDS) for t, c in _PAGE_COLUMNS.items()}
TAIL_PAGE_CONTINUED = {t: _TAIL_PAGE.format(columns=c, bounds="") for t, c in _PAGE_COLUMNS.items()}
"""Both forms by whether the entries' times are read (as READ_PAGE)."""

# Committed entries a checkpoint has not delivered: visible in the current snapshot, not in
# `seen`, and (inside a poll) not among the poll's entries up to `after`.
LAG = """
select count(*), min(create_time), current_timestamp - min(create_time) from oplog_entry
where xact_id >= pg_snapshot_xmin(%(seen)s::pg_snapshot)
  and not pg_visible_in_snapshot(xact_id, %(seen)s::pg_snapshot)
  and pg_visible_in_snapshot(xact_id, pg_current_snapshot())
  and not (%(reading)s::pg_snapshot is not null
           and pg_visible_in_snapshot(xact_id, %(reading)s::pg_snapshot) and id <= %(after)s)
"""

# --- consumers ----------------------------------------------------------------------------------

BEGIN = "begin"


def begin_statement(
    isolation: psycopg.IsolationLevel | None, read_only: bool | None, deferrable: bool | None
) -> str:
    """The BEGIN of a transaction with a connection's settings (as psycopg composes its
    own): the isolation level, read-only and deferrable when set, else the server's
    defaults."""
    parts = [BEGIN]
    if isolation is not None:
        parts.append("isolation level " + isolation.name.replace("_", " ").lower())
    if read_only is not None:
        parts.append("read only" if read_only else "read write")
    if deferrable is not None:
        parts.append("deferrable" if deferrable else "not deferrable")
    return " ".join(parts)


COMMIT = "commit"
ASYNC_COMMIT = "set local synchronous_commit to off"
"""For a consumer's page: its commit need not wait for the disk (the page is applied again
if a crash undoes it, with the position that records it)."""
INDEX_SCANS = "set local enable_seqscan to off"
"""For a replicator's page, before its statements: its update and delete runs join a few
hundred keys to the table, which the planner, on a table that is small or not analyzed yet (a
replica catching up), plans as a scan of the whole table per run; the key's index is what
they need. Statements without an index to use still scan. Not before the catalog query of a
table's traits, whose plans it makes slower."""
SEQSCAN_SETTING = "select current_setting('enable_seqscan')"
"""The caller's setting, read once before a replay in the caller's transaction..."""
PUT_BACK_SEQSCAN = "select set_config('enable_seqscan', %s, true)"
"""...and put back after each of its pages' statements (replay_plan.on_the_keys_index)."""

CONSUMER_GET = "select checkpoint from oplog_consumer where name = %s"
CONSUMER_LOCK = CONSUMER_GET + " for update"
CONSUMER_CREATE = (
    "insert into oplog_consumer (name, checkpoint) values (%s, %s) on conflict (name) do nothing"
)
CONSUMER_SAVE = (
    "insert into oplog_consumer (name, checkpoint) values (%s, %s) on conflict (name)"
    " do update set checkpoint = excluded.checkpoint, update_time = current_timestamp"
)
CONSUMERS = "select name, checkpoint, update_time from oplog_consumer order by name"

# --- statistics ---------------------------------------------------------------------------------

STATS_AGGREGATES = (
    "select aggregate_name, count(*), sum(length(data)), min(id), max(id)"
    " from oplog_entry group by 1 order by 1"
)
STATS_KEYS = "select key_id, count(*) from oplog_entry group by 1 order by 1"
STATS_TICKETS = "select name, version from oplog_ticket order by name"

# --- migrations ---------------------------------------------------------------------------------

MIGRATIONS_TABLE = """
create table if not exists oplog_schema_migrations (
  version integer primary key,
  name text not null,
  applied_at timestamptz not null default current_timestamp
)
"""
MIGRATIONS_LOCK = "select pg_advisory_xact_lock(%s)"
MIGRATIONS_APPLIED = "select version from oplog_schema_migrations"
MIGRATIONS_EXIST = "select to_regclass('oplog_schema_migrations') is not null"
MIGRATION_RECORD = "insert into oplog_schema_migrations (version, name) values (%s, %s)"
MIGRATION_FORGET = "delete from oplog_schema_migrations where version = %s"

# HashiCorp Boundary's oplog tables: its three tables, and no key_id (schema.boundary_tables
# also checks that no oplog migration is recorded).
BOUNDARY_TABLES = """
select to_regclass('oplog_entry') is not null
  and to_regclass('oplog_ticket') is not null
  and to_regclass('oplog_metadata') is not null
  and not exists (select from pg_attribute
                  where attrelid = to_regclass('oplog_entry') and attname = 'key_id'
                    and not attisdropped)
"""
ADD_KEY_ID = "alter table oplog_entry add column key_id text"
ENTRY_BLOBS = "select id, data from oplog_entry order by id"
SET_KEY_IDS = """
update oplog_entry e set key_id = u.key_id
from unnest(%s::bigint[], %s::text[]) as u (id, key_id) where e.id = u.id
"""

# --- inspection (oplog ls) ----------------------------------------------------------------------

ENTRY_IDS = "select e.id from oplog_entry e where {} order by e.id{}"
"""Entry ids by conditions (composed by oplog.inspection.entry_ids) and an optional limit."""
HAS_METADATA = (
    "exists (select 1 from oplog_metadata m where m.entry_id = e.id and m.key = %s"
    " and m.value = %s)"
)
