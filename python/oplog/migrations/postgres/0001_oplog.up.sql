-- The operation log: entries, their metadata, and the tickets that serialize writers.
-- Layout of HashiCorp Boundary's oplog tables (v2: entry.key_id), with identity keys.

create table oplog_entry (
  id bigint generated always as identity primary key,
  create_time timestamptz not null default current_timestamp,
  version text not null check (version in ('v1', 'v2')),
  aggregate_name text not null check (length(aggregate_name) > 0),
  data bytea not null,
  key_id text not null check (length(key_id) > 0)
);
comment on table oplog_entry is 'oplog entries: an encrypted queue of operations on one aggregate';

create index oplog_entry_aggregate_name_id_idx on oplog_entry (aggregate_name, id);

create table oplog_ticket (
  id bigint generated always as identity primary key,
  create_time timestamptz not null default current_timestamp,
  update_time timestamptz not null default current_timestamp,
  name text not null unique check (length(name) > 0),
  version bigint not null default 1 check (version >= 1)
);
comment on table oplog_ticket is 'one row per aggregate name; writers redeem version -> version + 1';

create table oplog_metadata (
  id bigint generated always as identity primary key,
  create_time timestamptz not null default current_timestamp,
  entry_id bigint not null references oplog_entry (id) on delete cascade on update cascade,
  key text not null check (length(key) > 0),
  value text null
);
comment on table oplog_metadata is 'key -> value rows of an entry; a key with no value has one row with a null value';

create index oplog_metadata_entry_id_idx on oplog_metadata (entry_id);
create index oplog_metadata_key_idx on oplog_metadata (key);
create index oplog_metadata_value_idx on oplog_metadata (value);

-- Entries and their metadata are immutable once written (they may be deleted).
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
