drop table oplog_metadata;
drop table oplog_entry;
drop table oplog_ticket;
drop function oplog_reject_update();
