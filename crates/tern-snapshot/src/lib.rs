#![doc = include_str!("../README.md")]

mod codec;
mod format;
mod live;
mod migrate;
mod rewrite;
mod sync;
mod volumes;

pub use format::{FORMAT_VERSION, GlobalValue, Meta, OpenFile, PAGE, Snapshot, Volume, WasiState};
pub use live::{Captured, Checkpoint, Migratable, Placement, Prepared, RunEnd, Trigger};
pub use migrate::{
    MigrateEnd, MigrationError, MigrationFailure, MigrationStats, Outbound, PrecopyEnd, fuzz_hello,
    fuzz_receive, migrate_run, receive, receive_with,
};
pub use rewrite::Rewriter;
pub use tern_passes::{PassError, instrument};
pub use volumes::{Difference, FileFacts, FileRecord, Mismatch, check as check_volumes};

/// Why a module cannot be made migratable, or a snapshot cannot be taken or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("module cannot be made migratable: {0}")]
    Rewrite(#[from] tern_passes::PassError),
    #[error("not a Tern snapshot (bad magic)")]
    NotASnapshot,
    #[error(
        "snapshot format version {version} is newer than this Tern reads (up to {supported}); upgrade Tern"
    )]
    FutureVersion { version: u32, supported: u32 },
    #[error(
        "snapshot format version {version} was written by an older Tern, whose checkpoints this one cannot resume (it reads version {oldest} and later)"
    )]
    OldVersion { version: u32, oldest: u32 },
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
    #[error("migration failed: {0}")]
    Migration(#[from] MigrationError),
    #[error("checkpoint failed: {reason}")]
    Capture { reason: String },
    #[error(transparent)]
    Runtime(#[from] tern_runtime::RuntimeError),
}
