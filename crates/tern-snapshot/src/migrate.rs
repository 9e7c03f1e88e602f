//! Live migration over TCP: iterative pre-copy of memory and volume files while the guest
//! runs, then a last stop at a safe point, the final delta and the restore on the
//! destination. The source keeps its paused guest until the destination confirms the
//! restore; any failure before that resumes it where it stopped, so nothing is lost.
//!
//! Wire format: frames of `u32` length (of what follows), a tag byte and a payload.
//!
//! | tag | from | payload |
//! | --- | --- | --- |
//! | `H` hello | source | JSON [`Hello`], then the LZ4 module (size prepended) |
//! | `A` accept / `E` error | destination | JSON: each volume as mapped here, with the files of a read-write one (`VolumeOffer`) / a UTF-8 reason |
//! | `P` pages | source | `u32` memory pages, `u32` count, then per page `u32` index, `u32` length, LZ4 block (length 0: the page is now zero) |
//! | `F` file | source | JSON `FileHeader` (size, mode, mtime), `u32` count, then per block `u32` index, `u32` length, LZ4 block |
//! | `D` deleted | source | JSON `Gone` |
//! | `V` verify | source | JSON `Expected`: the SHA-256 of a file the guest uses in a volume read-only here |
//! | `K` round end | source, then destination | nothing: the destination echoes it once every frame before it is applied |
//! | `Z` final | source | JSON [`Meta`] |
//! | `R` restored / `E` error | destination | nothing / a UTF-8 reason |
//!
//! A round's pages are those that differ from what was last sent (compared against the
//! copy kept of it), so no write barrier is needed in the guest. The source starts the
//! next round only when the destination has echoed the last one's `K`: on a slow link the
//! socket buffers would otherwise still hold earlier rounds when the guest stops, and
//! the stop would wait for them.
//!
//! Volumes (see `sync`): a read-write volume gets only the 64 KiB blocks whose SHA-256
//! differs from the destination's own copy, staged beside the volume and moved in by
//! rename just before the destination confirms; a volume read-only on either side is
//! never written, and the files the guest uses there must match by SHA-256. A migration
//! that fails at any point leaves the destination's volumes as they were.

mod error;
mod receive;
mod source;
mod wire;

use serde::{Deserialize, Serialize};

pub use error::{MigrationError, MigrationFailure};
pub(crate) use error::{local, protocol};
pub use receive::{fuzz_hello, fuzz_receive, receive, receive_with};
pub use source::{MigrateEnd, MigrationStats, Outbound, PrecopyEnd, migrate_run};

/// Blocks of one file sent in one frame (4 MiB), so a large file never makes one huge
/// frame.
const BLOCKS_PER_FRAME: usize = 64;

/// Version of this protocol; both sides must speak the same.
const PROTOCOL: u32 = 2;

/// Pages sent in one frame at most (16 MiB), so that no frame needs more memory than that
/// to be read.
const PAGES_PER_FRAME: usize = 256;

/// First frame of a migration.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    #[serde(default)]
    protocol: u32,
    format_version: u32,
    module_digest: String,
    /// Guest path of each volume and whether it is read-only at the source, so the
    /// destination can refuse early and say which it will only check.
    volumes: Vec<(String, bool)>,
}

/// A file the source no longer has.
#[derive(Debug, Serialize, Deserialize)]
struct Gone {
    volume: String,
    path: String,
}
