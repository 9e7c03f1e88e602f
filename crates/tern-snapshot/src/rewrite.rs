//! The migratable rewrite ([`tern_passes::migratable`]), cached: [`Rewriter::rewrite`]
//! keys its cache by the original module's SHA-256, the rewrite's version and the
//! passes' source, so a module is rewritten once; the compiled rewritten module is kept
//! beside it in an `ArtifactCache`.

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use crate::SnapshotError;

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
            h.update(tern_passes::REWRITE_VERSION.to_le_bytes());
            for source in tern_passes::MIGRATABLE_SOURCES {
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
        let out = tern_passes::migratable(wasm)?;
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
