//! Volumes across a live migration: what each side has, and how the destination takes
//! in the source's files without touching its own until the migration commits.
//!
//! - The destination describes each read-write volume it maps ([`VolumeOffer`]: every
//!   file with its size, mode, mtime and the SHA-256 of each 64 KiB block), so the
//!   source sends only blocks that differ from what is already there ([`FileIndex`]
//!   keeps the source's own hashes, reusing those of files that have not changed).
//! - A volume the destination maps read-only is never written: the source sends the
//!   SHA-256 of each file the guest uses there, and the destination refuses the
//!   migration, naming the file, when its copy differs or is missing.
//! - Everything the destination receives goes into a staging directory beside the
//!   volume ([`Staging`]). [`Staging::commit`] moves it in by rename, keeping what it
//!   replaces, just before the destination confirms; until the confirmation has gone
//!   out, [`Committed::rollback`] puts every file and directory time back. A migration
//!   that fails at any phase leaves the volumes as they were, mtimes included.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, FileTimes};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tern_runtime::{DirAccess, Preopen};

use crate::SnapshotError;
use crate::volumes::{hash_file, inside, mtime_ns, plain_relative};

mod stage;

pub(crate) use stage::{Staging, clear_stale_stages};

/// Size of a file block compared and sent as a unit.
pub(crate) use crate::volumes::BLOCK;

/// How long after its mtime a file's cached hashes are trusted: file times are kept at
/// the kernel's tick, so a write right after a hash may leave the mtime unchanged.
const MTIME_SLACK: Duration = Duration::from_secs(1);

/// Prefix of the staging directories made beside a volume.
const STAGING_PREFIX: &str = ".tern-incoming-";

use crate::migrate::{local, protocol};

/// A regular file of a volume: size, mode, mtime and the SHA-256 of each block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileEntry {
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: u64,
    /// SHA-256 of each 64 KiB block, hex.
    pub blocks: Vec<String>,
}

/// A volume as the destination maps it, sent in its accept frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VolumeOffer {
    pub guest: String,
    /// Mapped read-only here: never written, only checked.
    pub read_only: bool,
    /// Its files, for a read-write volume.
    pub files: Vec<FileEntry>,
}

/// The header of a file frame: where the file goes and what it becomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileHeader {
    pub volume: String,
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: u64,
}

/// A file the guest uses in a volume the destination maps read-only, with the SHA-256
/// of its contents at the source (`None`: there is no such file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Expected {
    pub volume: String,
    pub path: String,
    pub sha256: Option<String>,
}

/// Relative paths of the regular files under `root` (symlinks are not followed).
pub(crate) fn list_files(root: &Path) -> std::io::Result<Vec<String>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(root.join(rel))? {
            let entry = entry?;
            let ty = entry.file_type()?;
            let name = rel.join(entry.file_name());
            if ty.is_dir() {
                walk(root, &name, out)?;
            } else if ty.is_file() {
                out.push(name.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

/// `path` read once: its entry (block hashes) and the SHA-256 of all of it.
fn entry(path: &Path, rel: &str) -> std::io::Result<(FileEntry, String)> {
    let h = hash_file(path, true)?;
    Ok((
        FileEntry {
            path: rel.to_owned(),
            size: h.size,
            mode: h.mode,
            mtime_ns: h.mtime_ns,
            blocks: h.blocks,
        },
        h.sha256,
    ))
}

/// The entries of every file of the volume at `root`.
pub(crate) fn inventory(root: &Path) -> std::io::Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    for rel in list_files(root)? {
        match entry(&root.join(&rel), &rel) {
            Ok((entry, _)) => out.push(entry),
            // Gone meanwhile: it is simply not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The source's hashes of its files, re-read only when a file may have changed.
#[derive(Default)]
pub(crate) struct FileIndex {
    cache: HashMap<PathBuf, Cached>,
}

struct Cached {
    size: u64,
    mtime_ns: u64,
    hashed_at: SystemTime,
    entry: FileEntry,
    sha256: String,
}

impl FileIndex {
    /// The entry and whole-file SHA-256 of `root/rel`; `Ok(None)` when it is gone.
    pub(crate) fn get(
        &mut self,
        root: &Path,
        rel: &str,
    ) -> std::io::Result<Option<(FileEntry, String)>> {
        let full = root.join(rel);
        let meta = match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (size, mtime) = (meta.len(), mtime_ns(&meta));
        let mode = meta.permissions().mode() & 0o7777;
        if let Some(c) = self.cache.get_mut(&full) {
            let settled = UNIX_EPOCH + Duration::from_nanos(mtime) + MTIME_SLACK <= c.hashed_at;
            if c.size == size && c.mtime_ns == mtime && settled {
                c.entry.mode = mode;
                return Ok(Some((c.entry.clone(), c.sha256.clone())));
            }
        }
        let hashed_at = SystemTime::now();
        let (entry, sha256) = match entry(&full, rel) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        self.cache.insert(
            full,
            Cached {
                size: entry.size,
                mtime_ns: entry.mtime_ns,
                hashed_at,
                entry: entry.clone(),
                sha256: sha256.clone(),
            },
        );
        Ok(Some((entry, sha256)))
    }
}

/// Reads the blocks `indices` of `root/rel`, for sending.
pub(crate) fn read_blocks(
    root: &Path,
    rel: &str,
    indices: &[usize],
) -> std::io::Result<Vec<(usize, Vec<u8>)>> {
    let mut f = File::open(root.join(rel))?;
    let mut out = Vec::with_capacity(indices.len());
    for &i in indices {
        f.seek(SeekFrom::Start((i * BLOCK) as u64))?;
        let mut block = Vec::with_capacity(BLOCK);
        (&mut f).take(BLOCK as u64).read_to_end(&mut block)?;
        out.push((i, block));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index reuses hashes of a file only while it is unchanged.
    #[test]
    fn the_index_sees_every_change() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("f");
        std::fs::write(&f, b"one").expect("write");
        let mut index = FileIndex::default();
        let (a, _) = index.get(d.path(), "f").expect("read").expect("exists");
        std::fs::write(&f, b"two").expect("write");
        let (b, _) = index.get(d.path(), "f").expect("read").expect("exists");
        assert_ne!(a.blocks, b.blocks, "same size, same tick: still re-read");
        std::fs::remove_file(&f).expect("rm");
        assert!(index.get(d.path(), "f").expect("read").is_none());
    }
}
