//! [`write_atomically`]: the one way Tern writes a file that must never be seen half
//! written (artifacts, rewritten modules, snapshots).

use std::io::Write as _;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory (made if
/// missing), synced, then renamed over `path`: a crash or a full disk never leaves half
/// a file under the final name.
///
/// # Errors
/// Any I/O error of making the directory, writing, syncing or renaming; `path` is then
/// as it was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_makes_their_directory() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("sub/dir/file.bin");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second, longer").expect("overwrite");
        assert_eq!(std::fs::read(&path).expect("read"), b"second, longer");
        // No temporary file is left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().expect("dir"))
                .expect("ls")
                .count(),
            1
        );
    }
}
