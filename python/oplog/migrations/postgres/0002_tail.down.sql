drop table oplog_consumer;
drop index oplog_entry_xact_id_idx;
alter table oplog_entry drop column xact_id;
