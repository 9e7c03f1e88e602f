//! The receiving side of a live migration on arbitrary bytes: the stream's magic, the
//! hello, then every kind of frame, applied to a bounded memory and to a stage of a
//! read-write volume in a scratch directory. It returns an error or `Ok`, never
//! panics, and never writes outside the scratch directory. Inputs get the stream's
//! magic in front, so the fuzzer gets past it to the frames.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("scratch dir"));
    let volume = dir.path().join("vol");
    let _ = std::fs::create_dir_all(&volume);
    let _ = tern_snapshot::fuzz_receive(data, &volume);
    let mut stream = b"TERNMIG\x02".to_vec();
    stream.extend_from_slice(data);
    let _ = tern_snapshot::fuzz_receive(&stream, &volume);
});
