-- Writers of the Go original (HashiCorp Boundary's internal/oplog, be9f25cce1) share these
-- tables: they insert an entry's version, aggregate name and data only, and read back its
-- create and update times. The key id they do not send is the one their blob names; a trigger
-- fills it in from there, so every entry has its key id in its column, whoever wrote it.

alter table oplog_entry add column if not exists update_time timestamptz not null
  default current_timestamp;

-- The bytes of the last length-delimited field `wanted` of a serialized protobuf message (NULL
-- when there is none); a message that does not parse is an error.
create function oplog_protobuf_field(message bytea, wanted int) returns bytea
language plpgsql immutable strict as $$
declare
  pos int := 0;
  size int := length(message);
  key bigint;
  len bigint;
  shift int;
  b int;
  found bytea := null;
begin
  while pos < size loop
    key := 0;
    shift := 0;
    loop
      if pos >= size or shift > 63 then
        raise exception 'not a protobuf message: a field key is cut short'
          using errcode = 'invalid_binary_representation';
      end if;
      b := get_byte(message, pos);
      pos := pos + 1;
      key := key | ((b & 127)::bigint << shift);
      exit when b < 128;
      shift := shift + 7;
    end loop;
    case key & 7
      when 0 then
        loop
          if pos >= size then
            raise exception 'not a protobuf message: a varint is cut short'
              using errcode = 'invalid_binary_representation';
          end if;
          b := get_byte(message, pos);
          pos := pos + 1;
          exit when b < 128;
        end loop;
      when 1 then
        pos := pos + 8;
      when 5 then
        pos := pos + 4;
      when 2 then
        len := 0;
        shift := 0;
        loop
          if pos >= size or shift > 63 then
            raise exception 'not a protobuf message: a length is cut short'
              using errcode = 'invalid_binary_representation';
          end if;
          b := get_byte(message, pos);
          pos := pos + 1;
          len := len | ((b & 127)::bigint << shift);
          exit when b < 128;
          shift := shift + 7;
        end loop;
        if len > size - pos then
          raise exception 'not a protobuf message: a field is cut short'
            using errcode = 'invalid_binary_representation';
        end if;
        if key >> 3 = wanted then
          found := substring(message from pos + 1 for len::int);
        end if;
        pos := pos + len::int;
      else
        raise exception 'not a protobuf message: wire type %', key & 7
          using errcode = 'invalid_binary_representation';
    end case;
  end loop;
  if pos > size then
    raise exception 'not a protobuf message: a fixed-size field is cut short'
      using errcode = 'invalid_binary_representation';
  end if;
  return found;
end;
$$;

-- The key id a serialized go-kms-wrapping BlobInfo names: BlobInfo.key_info (field 5), then
-- KeyInfo.key_id (field 3). NULL when it names none.
create function oplog_blob_key_id(blob bytea) returns text
language sql immutable strict
return convert_from(oplog_protobuf_field(oplog_protobuf_field(blob, 5), 3), 'UTF8');

create function oplog_entry_fill_key_id() returns trigger
language plpgsql as $$
begin
  new.key_id := oplog_blob_key_id(new.data);
  return new;
end;
$$;

create trigger oplog_entry_key_id_from_blob before insert on oplog_entry
  for each row when (new.key_id is null) execute function oplog_entry_fill_key_id();
