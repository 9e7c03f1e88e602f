//! Tern's pre-pass on arbitrary bytes: it refuses or returns a valid module, never
//! panics (the pass validates its own output).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tern_snapshot::instrument::instrument(data);
});
