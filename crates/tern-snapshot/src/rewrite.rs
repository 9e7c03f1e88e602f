//! The migratable rewrite: the libc fast paths of [`tern_runtime::builtins`], then Tern's
//! pre-pass ([`crate::instrument`]), which puts safe points at loop headers and before
//! every import call, followed by Tern's unwind pass ([`crate::unwind`]), which lets
//! every call that can reach a safe point unwind the call stack into linear memory and
//! rewind it later.
//!
//! [`Rewriter::rewrite`] keys its cache by the original module's SHA-256, the rewrite's
//! version and the passes' source, so a module is rewritten once; the compiled rewritten
//! module is kept beside it in an `ArtifactCache`.

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::SnapshotError;
use crate::instrument::instrument_with_safepoint;

/// Changes whenever the rewrite's output for the same input changes.
const REWRITE_VERSION: u32 = 7;

/// The source of the passes, part of the cache key: a Tern whose rewrite changed never
/// reuses a module an older one rewrote, even if the version above was not bumped.
const PASS_SOURCES: [&str; 5] = [
    include_str!("instrument.rs"),
    include_str!("unwind.rs"),
    include_str!("liveness.rs"),
    include_str!("bounded.rs"),
    include_str!("rewrite.rs"),
];

/// Runs the rewrite and keeps its results.
#[derive(Debug, Clone)]
pub struct Rewriter {
    cache: Option<PathBuf>,
}

impl Rewriter {
    /// A rewriter that caches rewritten modules and their compiled artifacts under
    /// `cache` when given.
    pub fn new(cache: Option<PathBuf>) -> Rewriter {
        Rewriter { cache }
    }

    /// Returns the migratable form of `wasm` (a binary module).
    ///
    /// # Errors
    /// [`SnapshotError::Rewrite`] when the module cannot be made migratable.
    pub fn rewrite(&self, wasm: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        let key = {
            let mut h = Sha256::new();
            h.update(REWRITE_VERSION.to_le_bytes());
            h.update(tern_runtime::builtins::IDENTITY.as_bytes());
            for source in PASS_SOURCES {
                h.update(source.as_bytes());
            }
            h.update(wasm);
            hex::encode(&h.finalize()[..16])
        };
        let cached = self.cache.as_ref().map(|d| d.join(format!("{key}.wasm")));
        if let Some(path) = &cached
            && let Ok(bytes) = std::fs::read(path)
            && wasmparser::Validator::new().validate_all(&bytes).is_ok()
        {
            tracing::debug!(path = %path.display(), "migratable rewrite: cache hit");
            return Ok(bytes);
        }
        // The fast paths come first, so that a long `memcpy` is one `memory.copy` rather
        // than a loop with a safe point in it; the module's own loops stay interruptible.
        let wasm = tern_runtime::builtins::apply(wasm);
        let (instrumented, safepoint) = instrument_with_safepoint(&wasm)?;
        let out = crate::unwind::unwindable(&instrumented, safepoint)?;
        if let Some(path) = &cached {
            // A cache that cannot be written only costs time next run.
            if let Err(e) = tern_runtime::write_atomically(path, &out) {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache rewritten module");
            }
        }
        Ok(out)
    }

    /// The artifact cache for compiled rewritten modules, beside the rewritten ones.
    pub fn artifacts(&self) -> Option<tern_runtime::ArtifactCache> {
        self.cache.clone().map(tern_runtime::ArtifactCache::new)
    }
}
