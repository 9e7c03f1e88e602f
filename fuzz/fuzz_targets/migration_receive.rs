//! The receiving side of a live migration on arbitrary bytes: the stream's magic, the
//! hello, then every kind of frame, applied to a bounded memory and to a stage of a
//! read-write volume in a scratch directory. It returns an error or `Ok`, never
//! panics, and never writes outside the scratch directory. Each input is tried as it
//! is, and after a well-formed magic and hello, so that the fuzzer reaches the frames
//! past the hello's digest.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("scratch dir"));
    let volume = dir.path().join("vol");
    let _ = std::fs::create_dir_all(&volume);
    let _ = tern_snapshot::fuzz_receive(data, &volume);
    let mut stream = tern_snapshot::fuzz_hello();
    stream.extend_from_slice(data);
    let _ = tern_snapshot::fuzz_receive(&stream, &volume);
});
