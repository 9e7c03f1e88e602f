//! What the guest left in its volumes, and whether host directories still hold it.
//!
//! A checkpoint records every file the guest has open or has changed (opened for
//! writing, created, renamed or removed) as [`FileRecord`]s: its size, mtime and
//! SHA-256 as the guest left them, or that it was absent. A restore compares the host
//! directories it is given against them ([`check`]) before anything runs: a database
//! that moved on since the checkpoint, restored under a guest whose memory remembers the
//! old one, would be silently corrupted.
//!
//! Paths come from the guest, so they are resolved without leaving the volume: a path
//! with `..`, an absolute one, or one that reaches outside through a symlink is never
//! read, and recorded as outside.

use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tern_runtime::Preopen;

/// A file of a volume as the guest left it at a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The guest path of its volume (`/data`).
    pub volume: String,
    /// Its path inside the volume.
    pub path: String,
    /// What was there; `None` when the file did not exist.
    pub state: Option<FileFacts>,
}

/// Size, modification time and content of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFacts {
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: u64,
    /// SHA-256 of the contents, hex.
    pub sha256: String,
}

/// How a host directory differs from what the guest left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub volume: String,
    pub path: String,
    pub what: Difference,
}

/// One way a file differs from its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// The guest left it; it is gone.
    Missing,
    /// The guest left no file here; there is one now.
    Appeared,
    /// Its size changed.
    Size { recorded: u64, found: u64 },
    /// Same size, other contents.
    Content,
    /// It cannot be read (or lies outside its volume).
    Unreadable { reason: String },
    /// Same contents, another modification time: the guest sees the same data, so this
    /// never stops a restore.
    Mtime,
}

impl Mismatch {
    /// Whether restoring over it could hand the guest other data than it left.
    pub fn matters(&self) -> bool {
        self.what != Difference::Mtime
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (v, p) = (&self.volume, &self.path);
        match &self.what {
            Difference::Missing => write!(f, "{p} in volume {v} is missing"),
            Difference::Appeared => {
                write!(f, "{p} in volume {v} exists, but the guest had left none")
            }
            Difference::Size { recorded, found } => write!(
                f,
                "{p} in volume {v} is {found} bytes where the guest left {recorded}"
            ),
            Difference::Content => write!(
                f,
                "{p} in volume {v} has other contents than the guest left (same size)"
            ),
            Difference::Unreadable { reason } => {
                write!(f, "{p} in volume {v} cannot be read: {reason}")
            }
            Difference::Mtime => write!(
                f,
                "{p} in volume {v} has the contents the guest left but another mtime"
            ),
        }
    }
}

/// Whether `path` is a plain relative path: not empty, no `..`, not absolute.
pub(crate) fn plain_relative(path: &str) -> bool {
    let rel = Path::new(path);
    !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The host path of `path` in the volume at `root`, if it stays inside it.
pub(crate) fn inside(root: &Path, path: &str) -> Option<PathBuf> {
    if !plain_relative(path) {
        return None;
    }
    let full = root.join(path);
    // A symlink anywhere on the way could lead out: resolve what exists of the path.
    let root = root.canonicalize().ok()?;
    let mut probe = full.clone();
    while !probe.exists() {
        probe = probe.parent()?.to_path_buf();
    }
    probe
        .canonicalize()
        .ok()?
        .starts_with(&root)
        .then_some(full)
}

/// A file's modification time in nanoseconds since the Unix epoch (0 when unknown).
pub(crate) fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// What one read of a file gives: its size, mode and mtime, the SHA-256 of all of it,
/// and (when asked for) the SHA-256 of each 64 KiB block, hex.
pub(crate) struct Hashed {
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: u64,
    pub sha256: String,
    pub blocks: Vec<String>,
}

/// Size of the blocks [`hash_file`] hashes one by one.
pub(crate) const BLOCK: usize = 64 * 1024;

/// Reads the file at `path` once and hashes it: whole, and by blocks with `blocks`.
/// The one reader of volume files for checkpoints, restores and migrations.
pub(crate) fn hash_file(path: &Path, blocks: bool) -> std::io::Result<Hashed> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let mut whole = Sha256::new();
    let mut block_hashes = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    let mut size = 0u64;
    loop {
        let mut n = 0;
        while n < BLOCK {
            let got = file.read(&mut buf[n..])?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        size += n as u64;
        whole.update(&buf[..n]);
        if blocks {
            block_hashes.push(hex::encode(Sha256::digest(&buf[..n])));
        }
        if n < BLOCK {
            break;
        }
    }
    Ok(Hashed {
        size,
        mode: meta.permissions().mode() & 0o7777,
        mtime_ns: mtime_ns(&meta),
        sha256: hex::encode(whole.finalize()),
        blocks: block_hashes,
    })
}

/// Size, mtime and SHA-256 of the file at `path`; `Ok(None)` when there is none.
pub(crate) fn facts(path: &Path) -> std::io::Result<Option<FileFacts>> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(std::io::Error::other("not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let h = hash_file(path, false)?;
    Ok(Some(FileFacts {
        size: h.size,
        mtime_ns: h.mtime_ns,
        sha256: h.sha256,
    }))
}

/// Records each of `files` (volume, path) as it is now under the volumes' host
/// directories `hosts` (guest path, host directory). Files that cannot be read or
/// lie outside their volume are left out with a warning: a checkpoint is never lost
/// to them.
pub(crate) fn record<'a>(
    hosts: &[(String, PathBuf)],
    files: impl IntoIterator<Item = &'a (String, String)>,
) -> Vec<FileRecord> {
    let mut out = Vec::new();
    for (volume, path) in files {
        let Some((_, root)) = hosts.iter().find(|(g, _)| g == volume) else {
            continue;
        };
        let Some(full) = inside(root, path) else {
            tracing::warn!(%volume, %path, "not recorded: the path leaves its volume");
            continue;
        };
        if full.is_dir() {
            // An open directory: what matters is the files in it the guest uses.
            continue;
        }
        match facts(&full) {
            Ok(state) => out.push(FileRecord {
                volume: volume.clone(),
                path: path.clone(),
                state,
            }),
            Err(e) => tracing::warn!(%volume, %path, "not recorded: {e}"),
        }
    }
    out
}

/// Compares `records` with the host directories `dirs` mapped to their volumes; returns
/// every difference, those that matter ([`Mismatch::matters`]) first.
pub fn check(records: &[FileRecord], dirs: &[Preopen]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    for r in records {
        let Some(dir) = dirs.iter().find(|d| d.guest == r.volume) else {
            continue;
        };
        let mismatch = |what| Mismatch {
            volume: r.volume.clone(),
            path: r.path.clone(),
            what,
        };
        let Some(full) = inside(&dir.host, &r.path) else {
            out.push(mismatch(Difference::Unreadable {
                reason: "the path leaves its volume".into(),
            }));
            continue;
        };
        let found = match facts(&full) {
            Ok(f) => f,
            Err(e) => {
                out.push(mismatch(Difference::Unreadable {
                    reason: e.to_string(),
                }));
                continue;
            }
        };
        let what = match (&r.state, found) {
            (None, None) => continue,
            (Some(_), None) => Difference::Missing,
            (None, Some(_)) => Difference::Appeared,
            (Some(want), Some(have)) if want.size != have.size => Difference::Size {
                recorded: want.size,
                found: have.size,
            },
            (Some(want), Some(have)) if want.sha256 != have.sha256 => Difference::Content,
            (Some(want), Some(have)) if want.mtime_ns != have.mtime_ns => Difference::Mtime,
            _ => continue,
        };
        out.push(mismatch(what));
    }
    out.sort_by_key(|m| !m.matters());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_runtime::DirAccess;

    fn vol(dir: &Path) -> Vec<Preopen> {
        vec![Preopen {
            host: dir.to_owned(),
            guest: "/data".into(),
            access: DirAccess::ReadWrite,
        }]
    }

    /// Every kind of change is found and named; an untouched directory passes.
    #[test]
    fn changes_since_the_record_are_found() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::write(d.path().join("db"), b"committed").expect("write");
        std::fs::write(d.path().join("same-size"), b"aaaa").expect("write");
        std::fs::write(d.path().join("gone"), b"x").expect("write");
        let hosts = vec![("/data".to_owned(), d.path().to_owned())];
        let files: Vec<(String, String)> = ["db", "same-size", "gone", "journal"]
            .iter()
            .map(|p| ("/data".to_owned(), (*p).to_owned()))
            .collect();
        let records = record(&hosts, &files);
        assert_eq!(records.len(), 4);
        assert!(check(&records, &vol(d.path())).is_empty());

        std::fs::write(d.path().join("db"), b"committed and more").expect("write");
        std::fs::write(d.path().join("same-size"), b"bbbb").expect("write");
        std::fs::remove_file(d.path().join("gone")).expect("rm");
        std::fs::write(d.path().join("journal"), b"hot").expect("write");
        let found = check(&records, &vol(d.path()));
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "db in volume /data is 18 bytes where the guest left 9",
                "same-size in volume /data has other contents than the guest left (same size)",
                "gone in volume /data is missing",
                "journal in volume /data exists, but the guest had left none",
            ]
        );
    }

    /// Paths that leave the volume are never read, even through a symlink.
    #[test]
    fn paths_never_leave_the_volume() {
        let d = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        std::fs::write(outside.path().join("secret"), b"s").expect("write");
        std::os::unix::fs::symlink(outside.path(), d.path().join("link")).expect("symlink");
        for p in ["../secret", "/etc/passwd", "link/secret", ""] {
            assert_eq!(inside(d.path(), p), None, "{p}");
        }
        assert!(inside(d.path(), "sub/new-file").is_some());
    }

    #[test]
    fn same_contents_with_another_mtime_does_not_matter() {
        let d = tempfile::tempdir().expect("tmp");
        let f = d.path().join("db");
        std::fs::write(&f, b"data").expect("write");
        let hosts = vec![("/data".to_owned(), d.path().to_owned())];
        let records = record(&hosts, &[("/data".to_owned(), "db".to_owned())]);
        let file = std::fs::File::options().write(true).open(&f).expect("open");
        file.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1))
            .expect("set mtime");
        let found = check(&records, &vol(d.path()));
        assert_eq!(found.len(), 1);
        assert!(!found[0].matters(), "{}", found[0]);
    }
}
