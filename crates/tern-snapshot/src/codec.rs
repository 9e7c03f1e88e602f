//! The length-prefixed blocks the snapshot file and the migration stream are both made
//! of: a `u32` little-endian length, then that many bytes. One writer and one reader;
//! the reader refuses anything short with the error its caller names.

use crate::SnapshotError;

/// Appends `block` with its length in front.
pub(crate) fn put_block(out: &mut Vec<u8>, block: &[u8]) {
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    out.extend_from_slice(block);
}

/// Reads integers and blocks from the front of a byte slice, never past its end.
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
    short: fn() -> SnapshotError,
}

impl<'a> Cursor<'a> {
    /// A reader of `bytes` whose every short read is `short()`.
    pub(crate) fn new(bytes: &'a [u8], short: fn() -> SnapshotError) -> Cursor<'a> {
        Cursor { rest: bytes, short }
    }

    /// What has not been read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < n {
            return Err((self.short)());
        }
        let (a, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(a)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A block written by [`put_block`].
    pub(crate) fn block(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short() -> SnapshotError {
        SnapshotError::Corrupt {
            reason: "short".into(),
        }
    }

    /// Blocks read back as written; a length past the end is the caller's error.
    #[test]
    fn blocks_round_trip_and_short_reads_are_refused() {
        let mut out = Vec::new();
        put_block(&mut out, b"one");
        put_block(&mut out, b"");
        let mut c = Cursor::new(&out, short);
        assert_eq!(c.block().expect("one"), b"one");
        assert_eq!(c.block().expect("empty"), b"");
        assert!(c.rest().is_empty());
        let mut bad = 100u32.to_le_bytes().to_vec();
        bad.extend_from_slice(b"abc");
        let e = Cursor::new(&bad, short).block().expect_err("short");
        assert!(e.to_string().contains("short"), "{e}");
    }
}
