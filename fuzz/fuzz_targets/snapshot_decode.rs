//! The snapshot decoder on arbitrary bytes: it returns a snapshot or an error, never
//! panics. Inputs are given a valid checksum so the fuzzer gets past it to the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let _ = tern_snapshot::Snapshot::decode(data);
    let mut framed = b"TERNSNAP\x01\x00\x00\x00".to_vec();
    framed.extend_from_slice(data);
    let sum = Sha256::digest(&framed);
    framed.extend_from_slice(&sum);
    let _ = tern_snapshot::Snapshot::decode(&framed);
});
