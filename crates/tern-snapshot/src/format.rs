//! The snapshot file: everything a stopped guest needs to continue elsewhere, in a form
//! that depends on no engine and no host architecture.
//!
//! Layout (all integers little-endian), documented for users in `docs/snapshot-format.md`:
//!
//! ```text
//! "TERNSNAP"  magic, 8 bytes
//! u32         format version (FORMAT_VERSION)
//! u32 + bytes metadata, JSON (Meta): digests, globals, WASI state, unwind buffer
//! u32 + bytes the original module, LZ4-compressed with its size prepended
//! u32         number of non-zero 64 KiB memory pages, then for each:
//!             u32 page index, u32 length, LZ4 block of exactly 65536 bytes
//! [32]        SHA-256 of every byte before it
//! ```
//!
//! Decoding checks the magic, the version and the checksum before it reads anything
//! else, and every length against what is left: a corrupt, truncated or future snapshot
//! is refused whole, never half-read.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::SnapshotError;
use crate::codec::{Cursor, put_block};

/// The current format version; decoding refuses newer ones.
pub const FORMAT_VERSION: u32 = 3;

/// The oldest version decoding accepts: before 3, the unwind records lay in the guest's
/// own memory, which no longer resumes under this Tern's rewrite.
pub const OLDEST_VERSION: u32 = 3;

/// Size of a Wasm page.
pub const PAGE: usize = 64 * 1024;

const MAGIC: &[u8; 8] = b"TERNSNAP";

/// Largest module a snapshot or a migration may carry.
pub(crate) const MAX_MODULE: usize = 256 << 20;

/// A value of a global, by its Wasm type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "bits", rename_all = "lowercase")]
pub enum GlobalValue {
    I32(u32),
    I64(u64),
    F32(u32),
    F64(u64),
    V128(u128),
}

/// A preopened directory as the guest knows it: its name, not where it is on the host.
/// A restore maps each volume to a host directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The guest path (`/data`).
    pub guest: String,
    /// The descriptor the guest sees it as.
    pub fd: u32,
    /// Whether the guest could only read it.
    pub read_only: bool,
}

/// A file or directory the guest opened with `path_open` and had not closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// The descriptor number the guest uses.
    pub fd: u32,
    /// The guest path of the volume it was opened under.
    pub volume: String,
    /// Its path relative to that volume, as the guest gave it.
    pub path: String,
    /// WASI `lookupflags`, `oflags` (without create, exclusive and truncate, which must
    /// not apply twice), rights and `fdflags` it was opened with.
    pub lookup_flags: u32,
    pub oflags: u32,
    pub rights_base: u64,
    pub rights_inheriting: u64,
    pub fd_flags: u32,
    /// The file offset at the checkpoint.
    pub offset: u64,
}

/// WASI rights that let a descriptor change its file: `fd_write`, `fd_allocate`,
/// `fd_filestat_set_size`, `fd_datasync` (wasi-libc asks for them only with O_WRONLY or
/// O_RDWR).
pub(crate) const WRITE_RIGHTS: u64 = 1 << 6 | 1 << 8 | 1 << 22 | 1 << 0;

impl OpenFile {
    /// Whether the guest opened it to change it.
    pub fn writable(&self) -> bool {
        self.rights_base & WRITE_RIGHTS != 0
    }
}

/// What of WASI a snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WasiState {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub volumes: Vec<Volume>,
    pub files: Vec<OpenFile>,
    /// The guest's monotonic clock at the checkpoint, in nanoseconds: after a restore it
    /// continues from here, so it never goes backwards.
    pub monotonic_ns: u64,
    /// Bytes of stdin the guest had been given (what its libc buffered but had not used
    /// yet is in its memory): a restore fed the same input skips this many.
    #[serde(default)]
    pub stdin_consumed: u64,
    /// The files the guest had open or had changed, as it left them: a restore checks
    /// its directories against these.
    #[serde(default)]
    pub volume_files: Vec<crate::FileRecord>,
}

/// Everything but the memory pages and the module bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// SHA-256 of the original (not rewritten) module, hex.
    pub module_digest: String,
    /// SHA-256 of the migratable rewrite of the module, hex: the saved stack (call-site
    /// indices and locals) only resumes under the same rewrite.
    #[serde(default)]
    pub rewrite_digest: String,
    /// Linear memory size in pages.
    pub memory_pages: u32,
    /// Mutable globals by index in the original module.
    pub globals: Vec<(u32, GlobalValue)>,
    /// The unwind records of the stopped call stack (innermost frame first), as they lie
    /// in the rewrite's own unwind memory after its 8-byte header.
    #[serde(with = "hex_bytes")]
    pub unwind: Vec<u8>,
    pub wasi: WasiState,
    /// Tern version that wrote it, for messages only.
    pub writer: String,
}

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: Meta,
    /// The original module.
    pub module: Vec<u8>,
    /// Non-zero pages: (page index, 64 KiB of contents), by increasing index.
    pub pages: Vec<(u32, Vec<u8>)>,
}

impl Snapshot {
    /// Serialises the snapshot.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] only if the metadata cannot be serialised.
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let meta = serde_json::to_vec(&self.meta).map_err(|e| SnapshotError::Corrupt {
            reason: format!("cannot encode metadata: {e}"),
        })?;
        let module = lz4_flex::compress_prepend_size(&self.module);
        let mut out = Vec::with_capacity(meta.len() + module.len() + self.pages.len() * 8192);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        put_block(&mut out, &meta);
        put_block(&mut out, &module);
        out.extend_from_slice(&(self.pages.len() as u32).to_le_bytes());
        for (index, data) in &self.pages {
            out.extend_from_slice(&index.to_le_bytes());
            put_block(&mut out, &lz4_flex::compress(data));
        }
        let sum = Sha256::digest(&out);
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Parses and checks a snapshot.
    ///
    /// # Errors
    /// [`SnapshotError::NotASnapshot`], [`SnapshotError::FutureVersion`] or
    /// [`SnapshotError::Corrupt`]; nothing is returned from a snapshot that fails any
    /// check.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            reason: reason.to_owned(),
        };
        if bytes.len() < MAGIC.len() + 4 + 32 {
            return Err(corrupt("truncated"));
        }
        let mut r = Cursor::new(&bytes[MAGIC.len()..bytes.len() - 32], || {
            SnapshotError::Corrupt {
                reason: "truncated".into(),
            }
        });
        let version = r.u32()?;
        if version > FORMAT_VERSION {
            return Err(SnapshotError::FutureVersion {
                version,
                supported: FORMAT_VERSION,
            });
        }
        if version < OLDEST_VERSION {
            return Err(SnapshotError::OldVersion {
                version,
                oldest: OLDEST_VERSION,
            });
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt("checksum mismatch (truncated or damaged)"));
        }
        let meta: Meta = serde_json::from_slice(r.block()?)
            .map_err(|e| corrupt(&format!("bad metadata: {e}")))?;
        let module = decompress_bounded(r.block()?, MAX_MODULE)
            .map_err(|e| corrupt(&format!("bad module block: {e}")))?;
        let digest = hex::encode(Sha256::digest(&module));
        if digest != meta.module_digest {
            return Err(corrupt("the embedded module does not match its digest"));
        }
        if meta.memory_pages > 65536 {
            return Err(corrupt("memory larger than 4 GiB"));
        }
        let count = r.u32()?;
        if count > meta.memory_pages {
            return Err(corrupt("more pages than the memory holds"));
        }
        let mut pages = Vec::with_capacity(count as usize);
        let mut last: Option<u32> = None;
        for _ in 0..count {
            let index = r.u32()?;
            if index >= meta.memory_pages || last.is_some_and(|l| index <= l) {
                return Err(corrupt("page index out of order or out of range"));
            }
            last = Some(index);
            let data = lz4_flex::decompress(r.block()?, PAGE)
                .map_err(|e| corrupt(&format!("bad page {index}: {e}")))?;
            if data.len() != PAGE {
                return Err(corrupt(&format!("page {index} is not 64 KiB")));
            }
            pages.push((index, data));
        }
        if !r.rest().is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Snapshot {
            meta,
            module,
            pages,
        })
    }
}

/// Bytes as a hex string in the JSON metadata.
mod hex_bytes {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// Decompresses an LZ4 block with its size prepended, refusing a claimed size above
/// `max` or above what LZ4 can expand the block to (255 times), so damaged or hostile
/// input cannot make the host allocate gigabytes.
pub(crate) fn decompress_bounded(block: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let Some(size) = block.get(..4) else {
        return Err("block too short".into());
    };
    let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if size > max || size > block.len().saturating_mul(255) {
        return Err(format!("block claims {size} bytes"));
    }
    lz4_flex::decompress_size_prepended(block).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        let module = b"\0asm\x01\0\0\0".to_vec();
        let mut page = vec![0u8; PAGE];
        page[10] = 7;
        Snapshot {
            meta: Meta {
                module_digest: hex::encode(Sha256::digest(&module)),
                rewrite_digest: "ab".repeat(32),
                memory_pages: 3,
                globals: vec![(0, GlobalValue::I32(4096)), (2, GlobalValue::F64(1))],
                unwind: vec![1, 0, 0, 0],
                wasi: WasiState {
                    args: vec!["app".into()],
                    ..WasiState::default()
                },
                writer: "test".into(),
            },
            module,
            pages: vec![(1, page)],
        }
    }

    /// Property: decode(encode(s)) == s.
    #[test]
    fn round_trips() {
        let s = sample();
        let bytes = s.encode().expect("encodes");
        assert_eq!(Snapshot::decode(&bytes).expect("decodes"), s);
    }

    /// Every single-byte change and every truncation is refused.
    #[test]
    fn damage_is_refused() {
        let bytes = sample().encode().expect("encodes");
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Snapshot::decode(&bad).is_err(), "flip at {i} accepted");
        }
        for n in [0, 5, 12, 40, bytes.len() - 1] {
            assert!(
                Snapshot::decode(&bytes[..n]).is_err(),
                "truncated to {n} accepted"
            );
        }
    }

    /// Property: whatever the bytes between the header and the checksum, decoding
    /// returns a snapshot or an error and never panics. The checksum is recomputed after
    /// each mutation so that the structural checks behind it are exercised.
    #[test]
    fn mutated_snapshots_with_valid_checksums_never_panic() {
        let good = sample().encode().expect("encodes");
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refused = 0;
        for _ in 0..3000 {
            let mut body = good[..good.len() - 32].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = 12 + (next() as usize) % (body.len() - 12);
                match next() % 4 {
                    0 => body[at] = next() as u8,
                    1 => body[at] ^= 1 << (next() % 8),
                    2 => {
                        body.remove(at);
                    }
                    _ => body.insert(at, next() as u8),
                }
            }
            let sum = Sha256::digest(&body);
            body.extend_from_slice(&sum);
            if Snapshot::decode(&body).is_err() {
                refused += 1;
            }
        }
        // Nearly every mutation breaks a length, an index or the module digest.
        assert!(refused > 2500, "only {refused} of 3000 mutations refused");
    }

    #[test]
    fn future_version_is_named() {
        let mut bytes = sample().encode().expect("encodes");
        bytes[8..12].copy_from_slice(&9u32.to_le_bytes());
        let err = Snapshot::decode(&bytes).expect_err("future");
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn an_older_version_is_refused_by_name() {
        let mut bytes = sample().encode().expect("encodes");
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let n = bytes.len() - 32;
        let sum = Sha256::digest(&bytes[..n]);
        bytes[n..].copy_from_slice(&sum);
        let err = Snapshot::decode(&bytes).expect_err("older");
        assert_eq!(
            err.to_string(),
            "snapshot format version 2 was written by an older Tern, whose checkpoints this one cannot resume (it reads version 3 and later)"
        );
    }

    #[test]
    fn unwind_records_travel_as_hex() {
        let snapshot = sample();
        let json = serde_json::to_string(&snapshot.meta).expect("json");
        assert!(json.contains(r#""unwind":"01000000""#), "{json}");
        let back = Snapshot::decode(&snapshot.encode().expect("encodes")).expect("decodes");
        assert_eq!(back.meta.unwind, [1, 0, 0, 0]);
    }
}
