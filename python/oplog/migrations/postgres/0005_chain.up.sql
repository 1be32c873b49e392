-- Tamper evidence (oplog.chain): each entry's place in its aggregate's chain and its tag, an
-- HMAC under a key only the log's clients hold; each aggregate's head, which every writer locks
-- before it writes and advances in the statement that inserts its entries. Entries written
-- before this migration, and those the Go original writes, have neither (they are unchained).
alter table oplog_entry
  add column chain_seq bigint,
  add column chain_tag bytea;

create table oplog_chain_head (
  aggregate_name text primary key,
  seq bigint not null default 0,
  tag bytea not null default ''::bytea,
  update_time timestamptz not null default current_timestamp
);
