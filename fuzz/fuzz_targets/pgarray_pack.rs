//! The PostgreSQL binary array packers on arbitrary elements: never a panic, and the output
//! parses back (header, then each element's length and bytes) to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oplog_core::pgarray;

fn be_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
}

fuzz_target!(|input: (Vec<Option<Vec<u8>>>, Vec<i64>)| {
    let (items, ints) = input;
    let borrowed: Vec<Option<&[u8]>> = items.iter().map(Option::as_deref).collect();
    let packed = pgarray::pack_varlena(pgarray::BYTEA_OID, &borrowed).expect("small arrays pack");
    assert_eq!(be_i32(&packed, 0), 1);
    assert_eq!(
        be_i32(&packed, 4),
        i32::from(items.iter().any(Option::is_none))
    );
    assert_eq!(be_i32(&packed, 12) as usize, items.len());
    let mut at = 20;
    for item in &items {
        let len = be_i32(&packed, at);
        at += 4;
        match item {
            None => assert_eq!(len, -1),
            Some(bytes) => {
                assert_eq!(&packed[at..at + len as usize], &bytes[..]);
                at += len as usize;
            }
        }
    }
    assert_eq!(at, packed.len());
    let packed = pgarray::pack_int8(&ints).expect("small arrays pack");
    assert_eq!(packed.len(), 20 + 12 * ints.len());
    for (i, value) in ints.iter().enumerate() {
        let at = 20 + 12 * i;
        assert_eq!(be_i32(&packed, at), 8);
        assert_eq!(&packed[at + 4..at + 12], &value.to_be_bytes());
    }
});
