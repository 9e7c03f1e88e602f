//! Tern's checkpoint and restore: a running guest stopped at a safe point, saved as a
//! [`Snapshot`] that depends on no engine and no architecture, and resumed elsewhere.
//!
//! A module is first made migratable ([`Rewriter`]: Tern's pre-pass, then Tern's unwind
//! pass), so that at a safe point — any WASI call, any loop header — it can unwind
//! its call stack into its own linear memory. [`Migratable::run`] runs it and, when its
//! [`Trigger`] fires, captures memory, globals and WASI state; [`Migratable::restore`]
//! rebuilds the instance from a snapshot and rewinds into the same frame.

mod bounded;
mod codec;
mod format;
pub mod instrument;
mod live;
mod liveness;
mod migrate;
mod rewrite;
mod sync;
mod unwind;
mod volumes;

/// Helpers shared by the passes' unit tests.
#[cfg(test)]
mod test_support {
    use wasmparser::Operator;

    /// Calls `f` with the operators of the only function of the module `text` (WAT) and
    /// the number of locals it declares.
    pub(crate) fn with_only_function<R>(
        text: &str,
        f: impl FnOnce(&[Operator<'_>], u32) -> R,
    ) -> R {
        let wasm = wat::parse_str(text).expect("valid wat");
        for payload in wasmparser::Parser::new(0).parse_all(&wasm) {
            if let wasmparser::Payload::CodeSectionEntry(body) = payload.expect("parses") {
                let mut declared = 0;
                for l in body.get_locals_reader().expect("locals") {
                    declared += l.expect("local").0;
                }
                let ops: Vec<_> = body
                    .get_operators_reader()
                    .expect("ops")
                    .into_iter()
                    .collect::<Result<_, _>>()
                    .expect("reads");
                return f(&ops, declared);
            }
        }
        panic!("no function")
    }
}

pub use format::{FORMAT_VERSION, GlobalValue, Meta, OpenFile, PAGE, Snapshot, Volume, WasiState};
pub use live::{Captured, Checkpoint, Migratable, Placement, Prepared, RunEnd, Trigger};
pub use migrate::{MigrateEnd, MigrationStats, fuzz_hello, fuzz_receive, migrate_run, receive};
pub use rewrite::Rewriter;
pub use volumes::{Difference, FileFacts, FileRecord, Mismatch, check as check_volumes};

/// Why a module cannot be made migratable, or a snapshot cannot be taken or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("module cannot be made migratable: {reason}")]
    Rewrite { reason: String },
    #[error("not a Tern snapshot (bad magic)")]
    NotASnapshot,
    #[error(
        "snapshot format version {version} is newer than this Tern reads (up to {supported}); upgrade Tern"
    )]
    FutureVersion { version: u32, supported: u32 },
    #[error("snapshot is corrupt, nothing was restored: {reason}")]
    Corrupt { reason: String },
    #[error("snapshot does not fit this module: {reason}")]
    Foreign { reason: String },
    #[error("volume {guest} of the snapshot has no host directory; pass --dir HOST::{guest}")]
    UnmappedVolume { guest: String },
    #[error(
        "cannot reopen {path} in volume {volume} after restore: {} (WASI errno {errno})",
        tern_runtime::wasi_errno_text(*errno)
    )]
    Reopen {
        volume: String,
        path: String,
        errno: i32,
    },
    #[error("migration failed: {reason}")]
    Migration { reason: String },
    #[error("checkpoint failed: {reason}")]
    Capture { reason: String },
    #[error(transparent)]
    Runtime(#[from] tern_runtime::RuntimeError),
}
