//! [`Captured`]: what `on_checkpoint` is handed of a paused guest.

use super::*;

/// A guest paused at a safe point, as the `on_checkpoint` callback sees it: its
/// metadata, and its linear memory borrowed in place (nothing is copied until asked).
#[derive(Debug)]
pub struct Captured<'a> {
    /// Everything but the memory and the module.
    pub meta: Meta,
    pub(super) memory: &'a [u8],
    pub(super) module: &'a [u8],
    /// Host directory of each volume, by guest path.
    pub(super) hosts: Vec<(String, PathBuf)>,
    /// Files the guest has open or has changed, by volume and path.
    pub(super) touched: Vec<(String, String)>,
}

impl Captured<'_> {
    /// The guest's whole linear memory.
    pub fn memory(&self) -> &[u8] {
        self.memory
    }

    /// Files the guest has open or has changed, by volume and path.
    pub(crate) fn touched(&self) -> &[(String, String)] {
        &self.touched
    }

    /// The host directory of each volume, by the guest path the guest knows it by.
    pub fn volume_hosts(&self) -> &[(String, PathBuf)] {
        &self.hosts
    }

    /// The files the guest has open or has changed, as they are now in their host
    /// directories: what a restore checks its directories against. Reads and hashes
    /// each of them, so a migration's rounds do not ask for it.
    pub fn volume_files(&self) -> Vec<FileRecord> {
        crate::volumes::record(&self.hosts, &self.touched)
    }

    /// An owned snapshot: the non-zero pages copied, the original module included, and
    /// the files of [`Captured::volume_files`] recorded.
    pub fn to_snapshot(&self) -> Snapshot {
        let pages = self
            .memory
            .chunks(PAGE)
            .enumerate()
            .filter(|(_, page)| page.iter().any(|b| *b != 0))
            .map(|(i, page)| (i as u32, page.to_vec()))
            .collect();
        let mut meta = self.meta.clone();
        meta.wasi.volume_files = self.volume_files();
        Snapshot {
            meta,
            module: self.module.to_vec(),
            pages,
        }
    }
}
