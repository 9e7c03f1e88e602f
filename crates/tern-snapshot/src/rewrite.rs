//! The migratable rewrite: Tern's pre-pass ([`crate::instrument`]) followed by Binaryen's
//! Asyncify, which makes every call that can reach `tern.safepoint` able to unwind the
//! call stack into linear memory and rewind it later.
//!
//! Binaryen runs as its `wasm-opt` program (Debian's `binaryen` package, or `$TERN_WASM_OPT`)
//! rather than as a library: it is a large C++ code base, and the one process call per
//! module is cached. [`Rewriter::rewrite`] keys its cache by the original module's
//! SHA-256, the rewrite's version and `wasm-opt`'s version, so a module is rewritten once;
//! the compiled rewritten module is kept beside it in an `ArtifactCache`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::SnapshotError;
use crate::instrument::{SAFEPOINT, instrument};

/// Changes whenever the rewrite's output for the same input changes.
const REWRITE_VERSION: u32 = 4;

/// Runs the rewrite and keeps its results.
#[derive(Debug, Clone)]
pub struct Rewriter {
    wasm_opt: PathBuf,
    cache: Option<PathBuf>,
}

impl Rewriter {
    /// A rewriter that uses `$TERN_WASM_OPT` or `wasm-opt` from PATH, caching rewritten
    /// modules and their compiled artifacts under `cache` when given.
    pub fn new(cache: Option<PathBuf>) -> Rewriter {
        let wasm_opt = std::env::var_os("TERN_WASM_OPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("wasm-opt"));
        Rewriter { wasm_opt, cache }
    }

    /// Returns the migratable form of `wasm` (a binary module).
    ///
    /// # Errors
    /// [`SnapshotError::Rewrite`] when the module cannot be made migratable, and
    /// [`SnapshotError::Binaryen`] when `wasm-opt` is missing or fails.
    pub fn rewrite(&self, wasm: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        let version = self.binaryen_version()?;
        let key = {
            let mut h = Sha256::new();
            h.update(REWRITE_VERSION.to_le_bytes());
            h.update(version.as_bytes());
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
        let instrumented = instrument(wasm)?;
        let out = self.asyncify(&instrumented)?;
        if let Some(path) = &cached {
            // A cache that cannot be written only costs time next run.
            if let Err(e) = write_atomically(path, &out) {
                tracing::warn!(path = %path.display(), error = %e, "cannot cache rewritten module");
            }
        }
        Ok(out)
    }

    /// The artifact cache for compiled rewritten modules, beside the rewritten ones.
    pub fn artifacts(&self) -> Option<tern_runtime::ArtifactCache> {
        self.cache.clone().map(tern_runtime::ArtifactCache::new)
    }

    fn binaryen_version(&self) -> Result<String, SnapshotError> {
        let out = Command::new(&self.wasm_opt)
            .arg("--version")
            .output()
            .map_err(|e| self.missing(e))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn missing(&self, e: std::io::Error) -> SnapshotError {
        SnapshotError::Binaryen {
            reason: format!(
                "cannot run {}: {e} (install Debian's binaryen package, or set TERN_WASM_OPT)",
                self.wasm_opt.display()
            ),
        }
    }

    fn asyncify(&self, wasm: &[u8]) -> Result<Vec<u8>, SnapshotError> {
        let dir = tempfile::tempdir().map_err(|e| SnapshotError::Binaryen {
            reason: format!("cannot make a scratch directory: {e}"),
        })?;
        let input = dir.path().join("in.wasm");
        let output = dir.path().join("out.wasm");
        std::fs::write(&input, wasm).map_err(|e| SnapshotError::Binaryen {
            reason: format!("cannot write {}: {e}", input.display()),
        })?;
        let out = Command::new(&self.wasm_opt)
            .arg(&input)
            .args([
                "--enable-bulk-memory",
                "--enable-sign-ext",
                "--enable-mutable-globals",
                "--enable-nontrapping-float-to-int",
                "--enable-simd",
                "--enable-multivalue",
                "--enable-reference-types",
                "--asyncify",
                &format!(
                    "--pass-arg=asyncify-imports@{}.{}",
                    SAFEPOINT.0, SAFEPOINT.1
                ),
                // Asyncify's output is meant to be optimised: it removes most of the
                // state checks it inserts where no unwind can happen.
                "-O2",
                // Keep the name section so traps still show function names.
                "-g",
                "-o",
            ])
            .arg(&output)
            .output()
            .map_err(|e| self.missing(e))?;
        if !out.status.success() {
            return Err(SnapshotError::Binaryen {
                reason: format!(
                    "wasm-opt --asyncify failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        std::fs::read(&output).map_err(|e| SnapshotError::Binaryen {
            reason: format!("cannot read {}: {e}", output.display()),
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
