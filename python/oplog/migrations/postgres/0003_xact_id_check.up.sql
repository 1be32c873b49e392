-- Only the server's own transaction id is accepted in oplog_entry.xact_id. A client that set an
-- old one (any role with INSERT can) would hide the entry from every tail, consumer and replica
-- already past it. A check constraint costs nothing measurable per row (a row trigger that
-- overwrote the value cost about 8% of a 1000-entry batch); NOT VALID leaves the rows written
-- before it alone (they carry earlier transactions' ids, or 1 from migration 2).
alter table oplog_entry add constraint oplog_entry_xact_id_is_current
  check (xact_id = pg_current_xact_id()) not valid;
