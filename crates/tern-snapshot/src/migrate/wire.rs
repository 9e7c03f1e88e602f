//! The migration stream's framing: the magic it starts with, frames of `u32` length,
//! tag and payload, the bound each kind of frame has, and the reading of payloads.

use std::io::{Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(super) use super::error::{local, protocol};
pub(super) use crate::codec::{Cursor, put_block};
use crate::format::PAGE;
use crate::{MigrationFailure, SnapshotError};

use super::{BLOCKS_PER_FRAME, PAGES_PER_FRAME};

/// How long the source waits for any answer of the destination.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a migration stream starts with, before its first frame: anything else is not
/// a Tern migration, and is dropped after eight bytes.
pub(super) const MAGIC: &[u8; 8] = b"TERNMIG\x02";

/// Room for a frame's JSON header.
pub(super) const HEADER_ROOM: usize = 64 << 10;

/// The largest frame of each kind the protocol allows: a length above it is refused
/// before anything is allocated for it.
pub(super) fn max_frame(tag: u8) -> usize {
    // An LZ4 block of a 64 KiB page or block is at most this long.
    let block = PAGE + PAGE / 255 + 16 + 8;
    match tag {
        b'H' => HEADER_ROOM + crate::format::MAX_MODULE + crate::format::MAX_MODULE / 255 + 16,
        b'P' => 8 + PAGES_PER_FRAME * (8 + block),
        b'F' => HEADER_ROOM + 4 + BLOCKS_PER_FRAME * (8 + block),
        b'Z' | b'A' => 64 << 20,
        _ => HEADER_ROOM,
    }
}

pub(super) fn write_frame(
    w: &mut impl Write,
    tag: u8,
    payload: &[u8],
) -> Result<u64, SnapshotError> {
    let len = u32::try_from(payload.len() + 1).map_err(|_| local("frame too large"))?;
    w.write_all(&len.to_le_bytes()).map_err(lost)?;
    w.write_all(&[tag]).map_err(lost)?;
    w.write_all(payload).map_err(lost)?;
    Ok(payload.len() as u64 + 5)
}

/// What a failed read of the peer's stream means, in words.
pub(super) fn lost(e: std::io::Error) -> SnapshotError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof => MigrationFailure::Lost {
            reason: "the peer closed the connection".into(),
        },
        ErrorKind::WouldBlock | ErrorKind::TimedOut => MigrationFailure::TimedOut {
            what: "did not answer",
            waited: REPLY_TIMEOUT,
        },
        _ => MigrationFailure::Lost {
            reason: format!("connection lost: {e}"),
        },
    }
    .here()
}

/// Reads one frame, refusing a length above what its kind allows ([`max_frame`])
/// before allocating, and allocating only as its bytes arrive.
pub(super) fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), SnapshotError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(lost)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let tag = head[4];
    if len == 0 {
        return Err(protocol("a frame of length 0"));
    }
    let max = max_frame(tag);
    if len - 1 > max {
        return Err(protocol(format!(
            "a frame {:?} of {len} bytes, where the protocol allows {max}",
            tag as char
        )));
    }
    let mut body = Vec::with_capacity((len - 1).min(1 << 20));
    r.take(len as u64 - 1)
        .read_to_end(&mut body)
        .map_err(lost)?;
    if body.len() != len - 1 {
        return Err(MigrationFailure::Lost {
            reason: "the peer closed the connection inside a frame".into(),
        }
        .here());
    }
    Ok((tag, body))
}

/// A reader of a frame's payload; a short one is a truncated frame.
pub(super) fn payload(body: &[u8]) -> Cursor<'_> {
    Cursor::new(body, || protocol("truncated frame"))
}

/// JSON header, then binary rest: `u32` JSON length first.
pub(super) fn json_frame<T: Serialize>(header: &T, rest: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + rest.len() + 4);
    put_block(&mut out, &json);
    out.extend_from_slice(rest);
    out
}

pub(super) fn parse_json<'a, T: Deserialize<'a>>(c: &mut Cursor<'a>) -> Result<T, SnapshotError> {
    serde_json::from_slice(c.block()?).map_err(|e| protocol(format!("bad header: {e}")))
}

/// What to tell the peer of `e`: its reason, without the "migration failed" the peer
/// adds itself.
pub(super) fn reason_of(e: &SnapshotError) -> String {
    match e {
        SnapshotError::Migration(e) => e.failure.to_string(),
        other => other.to_string(),
    }
}
