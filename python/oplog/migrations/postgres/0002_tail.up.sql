-- Commit-ordered reading: the transaction that wrote each entry, and named consumer positions.

-- Entries written before this migration were all committed when it ran (it waits for every
-- transaction holding a lock on oplog_entry), so they get transaction id 1, older than any real
-- one; the constant default adds the column without rewriting the table. New entries record the
-- top-level transaction that wrote them.
alter table oplog_entry add column xact_id xid8 not null default '1';
alter table oplog_entry alter column xact_id set default pg_current_xact_id();
comment on column oplog_entry.xact_id is 'the transaction that wrote the entry (1: before migration 2)';

create index oplog_entry_xact_id_idx on oplog_entry (xact_id);

create table oplog_consumer (
  name text primary key check (length(name) > 0),
  create_time timestamptz not null default current_timestamp,
  update_time timestamptz not null default current_timestamp,
  checkpoint text not null check (length(checkpoint) > 0)
);
comment on table oplog_consumer is 'named readers of the log and the checkpoint each has processed up to';
