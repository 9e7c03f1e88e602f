//! The destination's side of a migration's volumes: what arrives is staged in a
//! directory beside each volume, moved in by rename when the migration commits, and put
//! back (files and directory times) if it fails before its confirmation is out.

use super::*;

/// A directory's access and modification times, to put back.
struct Times {
    path: PathBuf,
    accessed: SystemTime,
    modified: SystemTime,
}

impl Times {
    fn of(path: &Path) -> Option<Times> {
        let m = std::fs::metadata(path).ok()?;
        Some(Times {
            path: path.to_owned(),
            accessed: m.accessed().ok()?,
            modified: m.modified().ok()?,
        })
    }

    fn put_back(&self) {
        let times = FileTimes::new()
            .set_accessed(self.accessed)
            .set_modified(self.modified);
        if let Err(e) = File::open(&self.path).and_then(|f| f.set_times(times)) {
            tracing::warn!(path = %self.path.display(), "cannot put its times back: {e}");
        }
    }
}

/// One volume on the destination while a migration comes in.
struct StagedVolume {
    guest: String,
    /// The volume's host directory.
    root: PathBuf,
    read_only: bool,
    /// The staging directory beside it, once something was staged.
    stage: Option<PathBuf>,
    /// The times of the directory holding the volume, before the stage was made.
    parent_times: Option<Times>,
    /// Files staged (relative path → mode, mtime), and files to remove.
    written: BTreeMap<String, (u32, u64)>,
    deleted: BTreeSet<String>,
}

impl StagedVolume {
    fn stage(&mut self) -> Result<PathBuf, SnapshotError> {
        if let Some(s) = &self.stage {
            return Ok(s.clone());
        }
        let name = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "volume".into());
        let parent = parent_of(&self.root);
        self.parent_times = Times::of(parent);
        let stage = parent.join(format!("{STAGING_PREFIX}{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        for sub in ["new", "old"] {
            std::fs::create_dir_all(stage.join(sub))
                .map_err(|e| local(format!("cannot make {}: {e}", stage.display())))?;
        }
        self.stage = Some(stage.clone());
        Ok(stage)
    }

    /// Removes the staging directory and puts the parent's times back.
    fn clear(&mut self) {
        if let Some(stage) = self.stage.take()
            && let Err(e) = std::fs::remove_dir_all(&stage)
        {
            tracing::warn!(stage = %stage.display(), "cannot remove the staging directory: {e}");
        }
        if let Some(t) = self.parent_times.take() {
            t.put_back();
        }
    }
}

impl Drop for StagedVolume {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What the destination has received of the volumes, outside them.
pub(crate) struct Staging {
    volumes: Vec<StagedVolume>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").finish_non_exhaustive()
    }
}

impl Staging {
    /// The volumes `names` (guest path, read-only at the source) mapped to `dirs`; a
    /// volume is read-only here when either side says so.
    pub(crate) fn new(
        dirs: &[Preopen],
        names: &[(String, bool)],
    ) -> Result<Staging, SnapshotError> {
        let mut volumes = Vec::new();
        for (guest, source_ro) in names {
            let dir = dirs.iter().find(|d| &d.guest == guest).ok_or_else(|| {
                SnapshotError::UnmappedVolume {
                    guest: guest.clone(),
                }
            })?;
            volumes.push(StagedVolume {
                guest: guest.clone(),
                // Absolute, so that the stage lands beside the volume even for `.`.
                root: dir.host.canonicalize().unwrap_or_else(|_| dir.host.clone()),
                read_only: *source_ro || dir.access == DirAccess::ReadOnly,
                stage: None,
                parent_times: None,
                written: BTreeMap::new(),
                deleted: BTreeSet::new(),
            });
        }
        Ok(Staging { volumes })
    }

    /// What this side has, for the accept frame.
    pub(crate) fn offer(&self) -> Result<Vec<VolumeOffer>, SnapshotError> {
        self.volumes
            .iter()
            .map(|v| {
                let files = if v.read_only {
                    Vec::new()
                } else {
                    inventory(&v.root)
                        .map_err(|e| local(format!("reading volume {}: {e}", v.root.display())))?
                };
                Ok(VolumeOffer {
                    guest: v.guest.clone(),
                    read_only: v.read_only,
                    files,
                })
            })
            .collect()
    }

    fn volume(&mut self, guest: &str) -> Result<&mut StagedVolume, SnapshotError> {
        self.volumes
            .iter_mut()
            .find(|v| v.guest == guest)
            .ok_or_else(|| protocol(format!("volume {guest} was not announced")))
    }

    /// Stages a file: the volume's copy (if any) with `blocks` (index, contents)
    /// written over it, cut to the header's size.
    pub(crate) fn write(
        &mut self,
        h: &FileHeader,
        blocks: impl IntoIterator<Item = Result<(u64, Vec<u8>), SnapshotError>>,
    ) -> Result<(), SnapshotError> {
        if !plain_relative(&h.path) {
            return Err(protocol(format!("file path {} leaves its volume", h.path)));
        }
        let v = self.volume(&h.volume)?;
        if v.read_only {
            return Err(local(format!(
                "the source sent {} for volume {}, which is read-only here",
                h.path, v.guest
            )));
        }
        let stage = v.stage()?;
        let staged = stage.join("new").join(&h.path);
        let io = |e: std::io::Error| local(format!("staging {}: {e}", h.path));
        if !v.written.contains_key(&h.path) {
            if let Some(parent) = staged.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let existing = inside(&v.root, &h.path).filter(|p| p.is_file());
            match existing {
                Some(src) if !v.deleted.contains(&h.path) => {
                    std::fs::copy(&src, &staged).map_err(io)?;
                }
                _ => {
                    File::create(&staged).map_err(io)?;
                }
            }
        }
        v.deleted.remove(&h.path);
        v.written.insert(h.path.clone(), (h.mode, h.mtime_ns));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&staged)
            .map_err(io)?;
        // The staged copy may have come read-only from the volume.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        for block in blocks {
            let (index, data) = block?;
            f.seek(SeekFrom::Start(index * BLOCK as u64))
                .and_then(|_| f.write_all(&data))
                .map_err(io)?;
        }
        f.set_len(h.size).map_err(io)?;
        Ok(())
    }

    /// Marks a file to be removed at commit.
    pub(crate) fn delete(&mut self, volume: &str, path: &str) -> Result<(), SnapshotError> {
        if !plain_relative(path) {
            return Err(protocol(format!("file path {path} leaves its volume")));
        }
        let v = self.volume(volume)?;
        if v.read_only {
            return Err(local(format!(
                "the source removed {path} in volume {volume}, which is read-only here"
            )));
        }
        if v.written.remove(path).is_some()
            && let Some(stage) = &v.stage
        {
            let _ = std::fs::remove_file(stage.join("new").join(path));
        }
        v.deleted.insert(path.to_owned());
        Ok(())
    }

    /// Checks that this side's copy of a file the guest uses in a read-only volume is
    /// the source's.
    pub(crate) fn verify(&mut self, e: &Expected) -> Result<(), SnapshotError> {
        let v = self.volume(&e.volume)?;
        let refuse = |what: &str| {
            local(format!(
                "{} in read-only volume {} {what}; the guest needs the same file on both sides",
                e.path, e.volume
            ))
        };
        let found = match inside(&v.root, &e.path) {
            Some(p) if p.is_file() => Some(
                hash_file(&p, false)
                    .map_err(|x| refuse(&format!("cannot be read here: {x}")))?
                    .sha256,
            ),
            Some(p) if p.exists() => return Err(refuse("is not a regular file here")),
            Some(_) => None,
            None => return Err(refuse("leaves its volume")),
        };
        match (&e.sha256, found) {
            (None, None) => Ok(()),
            (Some(_), None) => Err(refuse("is missing here")),
            (None, Some(_)) => Err(refuse("exists here but not at the source")),
            (Some(a), Some(b)) if *a == b => Ok(()),
            (Some(_), Some(_)) => Err(refuse("differs here from the source's (SHA-256)")),
        }
    }

    /// Moves every staged file into its volume and removes the deleted ones, keeping
    /// what they replace until [`Committed::finish`]. On failure nothing is left
    /// changed.
    pub(crate) fn commit(mut self) -> Result<Committed, SnapshotError> {
        let mut done = Committed {
            volumes: Vec::new(),
        };
        let volumes = std::mem::take(&mut self.volumes);
        for v in volumes {
            let mut c = CommittedVolume::of(v);
            if let Err(e) = commit_volume(&mut c) {
                c.rollback();
                done.rollback();
                return Err(e);
            }
            done.volumes.push(c);
        }
        Ok(done)
    }
}

/// A volume whose staged files have been moved in.
struct CommittedVolume {
    volume: StagedVolume,
    /// Targets now in the volume that came from the stage, in the order they went in.
    placed: Vec<PathBuf>,
    /// (target, backup) of each file moved out of the volume.
    moved_out: Vec<(PathBuf, PathBuf)>,
    /// Directories made in the volume, outermost first.
    made: Vec<PathBuf>,
    /// Times of the volume's directories before the commit.
    times: Vec<Times>,
}

impl CommittedVolume {
    fn rollback(&mut self) {
        for target in self.placed.drain(..).rev() {
            let _ = std::fs::remove_file(&target);
        }
        for (target, backup) in self.moved_out.drain(..).rev() {
            if let Err(e) = std::fs::rename(&backup, &target) {
                tracing::error!(file = %target.display(), "cannot put the file back: {e}");
            }
        }
        for dir in self.made.drain(..).rev() {
            let _ = std::fs::remove_dir(&dir);
        }
        for t in self.times.drain(..) {
            t.put_back();
        }
        self.volume.clear();
    }
}

impl CommittedVolume {
    fn of(mut v: StagedVolume) -> CommittedVolume {
        CommittedVolume {
            volume: StagedVolume {
                guest: v.guest.clone(),
                root: v.root.clone(),
                read_only: v.read_only,
                stage: v.stage.take(),
                parent_times: v.parent_times.take(),
                written: std::mem::take(&mut v.written),
                deleted: std::mem::take(&mut v.deleted),
            },
            placed: Vec::new(),
            moved_out: Vec::new(),
            made: Vec::new(),
            times: Vec::new(),
        }
    }
}

/// Moves the staged files of `c` into its volume, recording each step so that
/// [`CommittedVolume::rollback`] can undo them.
fn commit_volume(c: &mut CommittedVolume) -> Result<(), SnapshotError> {
    let Some(stage) = c.volume.stage.clone() else {
        return Ok(());
    };
    let root = c.volume.root.clone();
    // Every directory of the volume the commit may touch, with its times.
    let mut dirs = BTreeSet::new();
    for rel in c.volume.written.keys().chain(&c.volume.deleted) {
        let mut p = Path::new(rel).parent();
        while let Some(d) = p {
            dirs.insert(root.join(d));
            p = d.parent();
        }
    }
    dirs.insert(root.clone());
    c.times = dirs.iter().filter_map(|d| Times::of(d)).collect();

    for rel in c.volume.deleted.clone() {
        let Some(target) = inside(&root, &rel) else {
            return Err(protocol(format!("{rel} leaves its volume")));
        };
        if target.is_file() {
            move_out(c, &stage, &rel, target, "removing")?;
        }
    }
    for (rel, (mode, mtime)) in c.volume.written.clone() {
        let Some(target) = inside(&root, &rel) else {
            return Err(protocol(format!("{rel} leaves its volume")));
        };
        let staged = stage.join("new").join(&rel);
        // The file's own mode and mtime, set on the staged copy: a rename keeps them.
        let when = UNIX_EPOCH + Duration::from_nanos(mtime);
        let set = File::options().write(true).open(&staged).and_then(|f| {
            f.set_times(FileTimes::new().set_modified(when).set_accessed(when))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
        });
        if let Err(e) = set {
            return Err(local(format!("{rel}: {e}")));
        }
        // Directories on the way that do not exist yet, outermost first.
        let mut missing = Vec::new();
        let mut p = target.parent();
        while let Some(d) = p {
            if d == root || d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing.into_iter().rev() {
            if let Err(e) = std::fs::create_dir(&d) {
                return Err(local(format!("{}: {e}", d.display())));
            }
            c.made.push(d);
        }
        if target.is_file() {
            move_out(c, &stage, &rel, target.clone(), "replacing")?;
        }
        if let Err(e) = std::fs::rename(&staged, &target) {
            return Err(local(format!("placing {rel}: {e}")));
        }
        c.placed.push(target);
    }
    Ok(())
}

/// Moves the volume's file `target` (at `rel`) into the stage's `old/`, where a
/// rollback finds it; `doing` names the step in an error.
fn move_out(
    c: &mut CommittedVolume,
    stage: &Path,
    rel: &str,
    target: PathBuf,
    doing: &str,
) -> Result<(), SnapshotError> {
    let backup = stage.join("old").join(rel);
    if let Some(parent) = backup.parent() {
        std::fs::create_dir_all(parent).map_err(|e| local(format!("staging: {e}")))?;
    }
    std::fs::rename(&target, &backup).map_err(|e| local(format!("{doing} {rel}: {e}")))?;
    c.moved_out.push((target, backup));
    Ok(())
}

/// Staged files moved into their volumes; what they replaced is kept until
/// [`Committed::finish`].
#[derive(Default)]
pub(crate) struct Committed {
    volumes: Vec<CommittedVolume>,
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed").finish_non_exhaustive()
    }
}

impl Committed {
    /// The migration committed: drop what the files replaced.
    pub(crate) fn finish(mut self) {
        for v in &mut self.volumes {
            v.placed.clear();
            v.moved_out.clear();
            v.made.clear();
            v.times.clear();
            v.volume.clear();
        }
        self.volumes.clear();
    }

    /// The migration failed after the commit: put everything back as it was.
    pub(crate) fn rollback(mut self) {
        for v in self.volumes.iter_mut().rev() {
            v.rollback();
        }
        self.volumes.clear();
    }
}

impl Drop for Committed {
    fn drop(&mut self) {
        // Neither finished nor rolled back: the migration did not commit.
        for v in self.volumes.iter_mut().rev() {
            v.rollback();
        }
    }
}

impl Drop for CommittedVolume {
    fn drop(&mut self) {
        // Whatever path dropped it before `finish`, the volume goes back as it was
        // (a no-op after `finish` or `rollback`, which empty the lists).
        self.rollback();
    }
}

/// The directory holding `dir`, where its stage goes: `.` for a bare relative name.
fn parent_of(dir: &Path) -> &Path {
    dir.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Removes staging directories left beside `dirs` by receivers that died.
pub(crate) fn clear_stale_stages(dirs: &[Preopen]) {
    for d in dirs {
        let host = d.host.canonicalize().unwrap_or_else(|_| d.host.clone());
        let parent = parent_of(&host);
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                tracing::info!(stage = %e.path().display(), "removing a stale staging directory");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    /// Everything about a tree a migration must not change: each entry's relative
    /// path, kind, mode, mtime and contents, and the times of the directory itself.
    fn picture(dir: &Path) -> Vec<(String, u32, SystemTime, Vec<u8>)> {
        fn walk(root: &Path, rel: &Path, out: &mut Vec<(String, u32, SystemTime, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
                .expect("read_dir")
                .map(|e| e.expect("entry"))
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let name = rel.join(e.file_name());
                let meta = std::fs::symlink_metadata(e.path()).expect("meta");
                let data = if meta.is_file() {
                    std::fs::read(e.path()).expect("read")
                } else {
                    Vec::new()
                };
                out.push((
                    name.display().to_string(),
                    meta.permissions().mode(),
                    meta.modified().expect("mtime"),
                    data,
                ));
                if meta.is_dir() {
                    walk(root, &name, out);
                }
            }
        }
        let meta = std::fs::metadata(dir).expect("meta");
        let mut out = vec![(
            ".".to_owned(),
            meta.permissions().mode(),
            meta.modified().expect("mtime"),
            Vec::new(),
        )];
        walk(dir, Path::new(""), &mut out);
        out
    }

    /// A parent holding a volume with a read-only file, a file in a subdirectory and a
    /// file to be removed, all with old mtimes.
    fn volume() -> (tempfile::TempDir, PathBuf) {
        let parent = tempfile::tempdir().expect("tmp");
        let root = parent.path().join("vol");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        for (rel, data, mode) in [
            ("small.txt", &b"small"[..], 0o444),
            ("sub/big.bin", &[7u8; 3 * BLOCK + 10][..], 0o644),
            ("gone.txt", &b"bye"[..], 0o600),
        ] {
            let p = root.join(rel);
            std::fs::write(&p, data).expect("write");
            let f = File::options().write(true).open(&p).expect("open");
            f.set_times(FileTimes::new().set_modified(old).set_accessed(old))
                .expect("times");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        for d in [root.join("sub"), root.clone(), parent.path().to_owned()] {
            File::open(&d)
                .and_then(|f| f.set_times(FileTimes::new().set_modified(old).set_accessed(old)))
                .expect("dir times");
        }
        (parent, root)
    }

    fn staging(root: &Path) -> Staging {
        let dirs = [Preopen {
            host: root.to_owned(),
            guest: "/data".into(),
            access: DirAccess::ReadWrite,
        }];
        Staging::new(&dirs, &[("/data".into(), false)]).expect("staging")
    }

    /// Stages a changed block of an existing file, a new file in a new directory, a
    /// changed mode, and a removal.
    fn stage_changes(s: &mut Staging) {
        let header = |path: &str, size: u64, mode: u32| FileHeader {
            volume: "/data".into(),
            path: path.into(),
            size,
            mode,
            mtime_ns: 1_700_000_000_000_000_000,
        };
        s.write(
            &header("sub/big.bin", (3 * BLOCK + 10) as u64, 0o644),
            [Ok((1, vec![9u8; BLOCK]))],
        )
        .expect("block");
        s.write(
            &header("new/dir/fresh.txt", 5, 0o640),
            [Ok((0, b"fresh".to_vec()))],
        )
        .expect("new file");
        s.write(&header("small.txt", 5, 0o644), []).expect("mode");
        s.delete("/data", "gone.txt").expect("delete");
    }

    /// Staged but never committed (the migration failed before its end): the volume
    /// and the directory holding it are exactly as they were, times included.
    #[test]
    fn a_migration_that_fails_before_its_commit_changes_nothing() {
        let (parent, root) = volume();
        let before = picture(parent.path());
        let mut s = staging(&root);
        stage_changes(&mut s);
        assert_ne!(
            picture(parent.path()),
            before,
            "the stage is beside the volume"
        );
        drop(s);
        assert_eq!(picture(parent.path()), before);
    }

    /// Committed, then the restore fails before the confirmation: rolled back whole.
    #[test]
    fn a_commit_rolled_back_changes_nothing() {
        let (parent, root) = volume();
        let before = picture(parent.path());
        let mut s = staging(&root);
        stage_changes(&mut s);
        let committed = s.commit().expect("commit");
        assert_eq!(
            std::fs::read(root.join("new/dir/fresh.txt")).expect("new"),
            b"fresh"
        );
        committed.rollback();
        assert_eq!(picture(parent.path()), before);

        // Dropped without `finish` is a rollback too.
        let mut s = staging(&root);
        stage_changes(&mut s);
        drop(s.commit().expect("commit"));
        assert_eq!(picture(parent.path()), before);
    }

    /// Committed and finished: the source's contents, modes and mtimes, and no stage.
    #[test]
    fn a_finished_commit_holds_the_source_files() {
        let (parent, root) = volume();
        let mut s = staging(&root);
        stage_changes(&mut s);
        s.commit().expect("commit").finish();
        let big = std::fs::read(root.join("sub/big.bin")).expect("big");
        assert_eq!(big.len(), 3 * BLOCK + 10);
        assert!(big[..BLOCK].iter().all(|b| *b == 7));
        assert!(big[BLOCK..2 * BLOCK].iter().all(|b| *b == 9));
        assert!(big[2 * BLOCK..].iter().all(|b| *b == 7));
        let fresh = std::fs::metadata(root.join("new/dir/fresh.txt")).expect("fresh");
        assert_eq!(fresh.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            mtime_ns(&fresh),
            1_700_000_000_000_000_000,
            "the source's mtime"
        );
        let small = std::fs::metadata(root.join("small.txt")).expect("small");
        assert_eq!(small.permissions().mode() & 0o777, 0o644);
        assert!(!root.join("gone.txt").exists());
        let names: Vec<String> = std::fs::read_dir(parent.path())
            .expect("parent")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["vol"], "no stage left beside the volume");
    }

    /// A read-only volume is only checked: same file passes, anything else names it;
    /// writes to it are refused.
    #[test]
    fn read_only_volumes_are_checked_never_written() {
        let (parent, root) = volume();
        let before = picture(parent.path());
        let dirs = [Preopen {
            host: root.clone(),
            guest: "/data".into(),
            access: DirAccess::ReadOnly,
        }];
        let mut s = Staging::new(&dirs, &[("/data".into(), false)]).expect("staging");
        let sha = |data: &[u8]| Some(hex::encode(Sha256::digest(data)));
        let check = |s: &mut Staging, path: &str, sha256| {
            s.verify(&Expected {
                volume: "/data".into(),
                path: path.into(),
                sha256,
            })
        };
        check(&mut s, "small.txt", sha(b"small")).expect("the same file");
        check(&mut s, "absent.txt", None).expect("absent on both sides");
        let e = check(&mut s, "small.txt", sha(b"other")).expect_err("differs");
        assert!(
            e.to_string()
                .contains("small.txt in read-only volume /data differs"),
            "{e}"
        );
        let e = check(&mut s, "absent.txt", sha(b"x")).expect_err("missing");
        assert!(
            e.to_string()
                .contains("absent.txt in read-only volume /data is missing"),
            "{e}"
        );
        let e = check(&mut s, "../escape", sha(b"x")).expect_err("escape");
        assert!(e.to_string().contains("leaves its volume"), "{e}");
        let header = FileHeader {
            volume: "/data".into(),
            path: "small.txt".into(),
            size: 1,
            mode: 0o644,
            mtime_ns: 0,
        };
        let e = s
            .write(&header, [Ok((0, b"x".to_vec()))])
            .expect_err("read-only");
        assert!(e.to_string().contains("read-only here"), "{e}");
        s.commit().expect("nothing to commit").finish();
        assert_eq!(picture(parent.path()), before);
    }

    /// A source cannot place a file outside the volume.
    #[test]
    fn paths_from_the_source_stay_in_the_volume() {
        let (_parent, root) = volume();
        let mut s = staging(&root);
        for path in ["../evil", "/etc/evil", "a/../../evil", ""] {
            let header = FileHeader {
                volume: "/data".into(),
                path: path.into(),
                size: 1,
                mode: 0o644,
                mtime_ns: 0,
            };
            assert!(s.write(&header, []).is_err(), "{path:?}");
            assert!(s.delete("/data", path).is_err(), "{path:?}");
        }
    }

    /// A stage left by a receiver that died is removed by the next; a live one's stays.
    #[test]
    fn stale_stages_are_cleared() {
        let (parent, root) = volume();
        // No process has this pid (above the kernel's pid_max).
        let dead = parent.path().join(format!("{STAGING_PREFIX}4194305-vol"));
        let live = parent
            .path()
            .join(format!("{STAGING_PREFIX}{}-vol", std::process::id()));
        for d in [&dead, &live] {
            std::fs::create_dir_all(d.join("new")).expect("mkdir");
        }
        clear_stale_stages(&[Preopen {
            host: root,
            guest: "/data".into(),
            access: DirAccess::ReadWrite,
        }]);
        assert!(!dead.exists());
        assert!(live.exists());
    }
}
