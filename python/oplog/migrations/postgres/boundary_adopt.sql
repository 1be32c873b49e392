-- Adopting HashiCorp Boundary's oplog tables (the layout of its internal/oplog migration
-- 01_db.up.sql at be9f25cce1) in place: the constraints, indexes and triggers of oplog's
-- migration 1 on the tables and rows already there. oplog.schema.migrate runs it in the
-- transaction that records migration 1 and applies the later ones, after it has added the
-- key_id column and filled it from each entry's blob. No row is rewritten but for its key_id.

alter table oplog_entry
  alter column key_id set not null,
  add constraint oplog_entry_version_check check (version in ('v1', 'v2')),
  add constraint oplog_entry_aggregate_name_check check (length(aggregate_name) > 0),
  add constraint oplog_entry_key_id_check check (length(key_id) > 0);
comment on table oplog_entry is 'oplog entries: an encrypted queue of operations on one aggregate';
create index oplog_entry_aggregate_name_id_idx on oplog_entry (aggregate_name, id);

alter table oplog_ticket
  alter column version set default 1,
  add constraint oplog_ticket_name_check check (length(name) > 0),
  add constraint oplog_ticket_version_check check (version >= 1);
comment on table oplog_ticket is 'one row per aggregate name; writers redeem version -> version + 1';

-- Boundary's table has its own indexes on key and on value already.
alter table oplog_metadata add constraint oplog_metadata_key_check check (length(key) > 0);
comment on table oplog_metadata is 'key -> value rows of an entry; a key with no value has one row with a null value';
create index oplog_metadata_entry_id_idx on oplog_metadata (entry_id);

create function oplog_reject_update() returns trigger
language plpgsql as $$
begin
  raise exception '% rows are immutable', tg_table_name
    using errcode = 'restrict_violation';
end;
$$;

create trigger oplog_entry_immutable before update on oplog_entry
  for each row execute function oplog_reject_update();
create trigger oplog_metadata_immutable before update on oplog_metadata
  for each row execute function oplog_reject_update();
