drop trigger oplog_entry_key_id_from_blob on oplog_entry;
drop function oplog_entry_fill_key_id();
drop function oplog_blob_key_id(bytea);
drop function oplog_protobuf_field(bytea, int);
alter table oplog_entry drop column update_time;
