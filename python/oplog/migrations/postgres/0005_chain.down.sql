drop table oplog_chain_head;
alter table oplog_entry drop column chain_tag, drop column chain_seq;
