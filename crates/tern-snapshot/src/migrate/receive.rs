//! The destination side of a live migration: a listener that drops what is not a Tern
//! migration, the hello, the rounds applied to a prepared instance and a stage of the
//! volumes, the commit and the restore.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tern_runtime::{DirAccess, Limits, Preopen};

use crate::SnapshotError;
use crate::format::{Meta, PAGE};
use crate::live::{Captured, Checkpoint, Migratable, RunEnd, Trigger};
use crate::sync::{BLOCK, Expected, FileHeader, Staging};

use super::wire::{
    Cursor, MAGIC, json_frame, local, lost, parse_json, payload, protocol, read_frame, reason_of,
    write_frame,
};
use super::{Gone, Hello, MigrationFailure, PROTOCOL};

/// How long a receiver waits for a new connection's first bytes: a source sends them
/// at once, and a peer that stalls must not keep the next one waiting long.
const GREET_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a receiver waits for its peer to say anything, after the first bytes.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits on `listener` for one migration, restores it into `dirs` and runs it to its end.
/// `ready` is called once the migration's module is accepted.
///
/// # Errors
/// A migration that breaks off or cannot be restored; the source then resumes its guest.
pub fn receive(
    listener: TcpListener,
    engine: &tern_runtime::Engine,
    rewriter: &crate::Rewriter,
    dirs: &[Preopen],
    limits: &Limits,
    progress: impl Fn(&str),
) -> Result<RunEnd, SnapshotError> {
    receive_with(
        listener,
        engine,
        rewriter,
        None,
        dirs,
        limits,
        progress,
        &Trigger::new(),
        |_| |_: Captured<'_>| Checkpoint::Continue,
        || {},
    )
}

/// [`receive`] of the module whose SHA-256 is `module` (hex) only, when given: a peer
/// that brings any other module is refused (it is told why, and the receiver listens
/// on), so that no one who reaches the port runs their own code as the app. The guest
/// stops at `trigger` once it runs here: `accepted` is
/// given the guest when its migration is accepted and returns the checkpoint handler
/// the guest runs with (an [`Outbound::route`](crate::Outbound::route), for a guest that
/// may move on again); `resumed` is called once the migration has committed and its
/// confirmation has gone out, just before the guest runs again here (from then on, the
/// guest is this side's).
///
/// # Errors
/// As [`receive`].
#[allow(clippy::too_many_arguments)]
pub fn receive_with<F: FnMut(Captured<'_>) -> Checkpoint>(
    listener: TcpListener,
    engine: &tern_runtime::Engine,
    rewriter: &crate::Rewriter,
    module: Option<&str>,
    dirs: &[Preopen],
    limits: &Limits,
    progress: impl Fn(&str),
    trigger: &Trigger,
    accepted: impl FnOnce(&Migratable) -> F,
    resumed: impl FnOnce(),
) -> Result<RunEnd, SnapshotError> {
    // Until a migration is accepted, a connection that fails (not a Tern migration, a
    // peer that says nothing, a hello that cannot be accepted) is dropped with one line
    // and the next one is awaited: no peer can end the receiver before it commits to one.
    let accepted_with = accepted;
    let (peer, accepted) = loop {
        let (stream, peer) = listener.accept().map_err(local)?;
        match greet(&stream)
            .and_then(|()| accept(stream, engine, rewriter, module, dirs, limits, trigger))
        {
            Ok(a) => break (peer, a),
            Err(e) => progress(&format!(
                "receive: {peer}: {}; still listening",
                reason_of(&e)
            )),
        }
    };
    progress(&format!("receive: migration from {peer}"));
    let on_checkpoint = accepted_with(&accepted.migratable);
    take(accepted, dirs, limits, on_checkpoint, resumed).map_err(|e| e.with_peer(peer))
}

/// Takes an accepted migration to its end: the rest of its frames, the commit of its
/// files and the restore.
fn take(
    accepted: Accepted,
    dirs: &[Preopen],
    limits: &Limits,
    on_checkpoint: impl FnMut(Captured<'_>) -> Checkpoint,
    resumed: impl FnOnce(),
) -> Result<RunEnd, SnapshotError> {
    let Accepted {
        mut reader,
        mut replies,
        migratable,
        trigger,
        mut prepared,
        mut staging,
    } = accepted;
    // From here on, `staging` holds whatever arrives; dropped on any failure, it
    // leaves the volumes untouched.
    let meta: Meta = loop {
        let (tag, body) = read_frame(&mut reader)?;
        match apply_frame(tag, &body, &mut prepared, &mut staging, &mut replies) {
            Ok(Some(meta)) => break meta,
            Ok(None) => {}
            Err(e) => return Err(refuse(&mut replies, e)),
        }
    };
    // Everything is here: the volumes take the staged files now, and give them back if
    // the restore fails before its confirmation has gone out.
    let committed = match staging.commit() {
        Ok(c) => c,
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    let mut confirm = replies.try_clone().map_err(local)?;
    let end = migratable.resume(
        prepared,
        &meta,
        &crate::Placement {
            dirs,
            inherit_stdio: true,
            // Guests that have read stdin are not migrated (see `control`).
            skip_stdin: false,
            limits,
        },
        &trigger,
        move || {
            write_frame(&mut confirm, b'R', &[])?;
            confirm.flush().map_err(lost)?;
            committed.finish();
            resumed();
            Ok(())
        },
        on_checkpoint,
    );
    if let Err(e) = &end {
        let _ = write_frame(&mut replies, b'E', reason_of(e).as_bytes());
    }
    end
}

/// A migration accepted: its stream, the instance its memory goes into, and the stage
/// its files go into.
struct Accepted {
    reader: BufReader<TcpStream>,
    replies: TcpStream,
    migratable: Migratable,
    trigger: Trigger,
    prepared: crate::Prepared,
    staging: Staging,
}

/// Reads a source's hello and accepts its migration, or refuses it (telling the source
/// why).
fn accept(
    stream: TcpStream,
    engine: &tern_runtime::Engine,
    rewriter: &crate::Rewriter,
    module_wanted: Option<&str>,
    dirs: &[Preopen],
    limits: &Limits,
    trigger: &Trigger,
) -> Result<Accepted, SnapshotError> {
    stream.set_nodelay(true).map_err(local)?;
    let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone().map_err(local)?);
    let mut replies = stream;
    let (tag, body) = read_frame(&mut reader)?;
    let (hello, module) = parse_hello(tag, &body).map_err(|e| refuse(&mut replies, e))?;
    if let Some(want) = module_wanted
        && hello.module_digest != want
    {
        return Err(refuse(
            &mut replies,
            local(format!(
                "the migration brings module sha256:{}, not the app's sha256:{want}: refused",
                hello.module_digest
            )),
        ));
    }
    crate::sync::clear_stale_stages(dirs);
    let staging = match Staging::new(dirs, &hello.volumes) {
        Ok(s) => s,
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    let migratable = match Migratable::new(engine, rewriter, &module) {
        Ok(m) => m,
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    // The instance is made now, and memory filled in place as pre-copy rounds arrive,
    // so that the stop-and-copy phase only writes the last changes.
    let trigger = trigger.clone();
    let prepared = match migratable.prepare(limits, &trigger) {
        Ok(Ok(p)) => p,
        Ok(Err(outcome)) => {
            return Err(refuse(
                &mut replies,
                local(format!(
                    "the guest cannot be instantiated here: {outcome:?}"
                )),
            ));
        }
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    let offer = match staging.offer() {
        Ok(o) => serde_json::to_vec(&o).map_err(local)?,
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    write_frame(&mut replies, b'A', &offer)?;
    Ok(Accepted {
        reader,
        replies,
        migratable,
        trigger,
        prepared,
        staging,
    })
}

/// Tells the source why its migration is refused (as well as the line allows), and
/// gives the reason back.
fn refuse(w: &mut TcpStream, e: SnapshotError) -> SnapshotError {
    let _ = write_frame(w, b'E', reason_of(&e).as_bytes());
    e
}

/// Applies one frame of the rounds: pages into `memory`, files into `staging`, a round's
/// end echoed on `replies`. The final frame's metadata is `Some`.
fn apply_frame(
    tag: u8,
    body: &[u8],
    memory: &mut impl Memory,
    staging: &mut Staging,
    replies: &mut impl Write,
) -> Result<Option<Meta>, SnapshotError> {
    let mut c = payload(body);
    match tag {
        b'P' => apply_pages(&mut c, memory),
        b'F' => stage_file(&mut c, staging),
        b'D' => parse_json::<Gone>(&mut c).and_then(|g| staging.delete(&g.volume, &g.path)),
        b'V' => parse_json::<Expected>(&mut c).and_then(|e| staging.verify(&e)),
        b'K' => write_frame(replies, b'K', &[]).and_then(|_| replies.flush().map_err(lost)),
        b'E' => Err(MigrationFailure::SourceGaveUp {
            reason: String::from_utf8_lossy(body).into_owned(),
        }
        .here()),
        b'Z' => {
            return serde_json::from_slice(body)
                .map(Some)
                .map_err(|e| protocol(format!("bad final frame: {e}")));
        }
        other => Err(protocol(format!("unexpected frame {:?}", other as char))),
    }
    .map(|()| None)
}

/// Where a migration's pages go: the destination's instance, or (for fuzzing) plain
/// memory.
pub(crate) trait Memory {
    fn resize(&mut self, pages: u32) -> Result<(), SnapshotError>;
    fn page_mut(&mut self, index: u32) -> Result<&mut [u8], SnapshotError>;
}

impl Memory for crate::Prepared {
    fn resize(&mut self, pages: u32) -> Result<(), SnapshotError> {
        crate::Prepared::resize(self, pages)
    }
    fn page_mut(&mut self, index: u32) -> Result<&mut [u8], SnapshotError> {
        crate::Prepared::page_mut(self, index)
    }
}

fn apply_pages(c: &mut Cursor<'_>, memory: &mut impl Memory) -> Result<(), SnapshotError> {
    let total = c.u32()?;
    let count = c.u32()?;
    if total > 65536 {
        return Err(protocol("more than 4 GiB of memory"));
    }
    memory.resize(total)?;
    for _ in 0..count {
        let index = c.u32()?;
        if index >= total {
            return Err(protocol("page index out of range"));
        }
        let block = c.block()?;
        let page = memory.page_mut(index)?;
        if block.is_empty() {
            page.fill(0);
            continue;
        }
        match lz4_flex::block::decompress_into(block, page) {
            Ok(n) if n == PAGE => {}
            Ok(_) => return Err(protocol(format!("page {index} is not 64 KiB"))),
            Err(e) => return Err(protocol(format!("page {index}: {e}"))),
        }
    }
    Ok(())
}

/// The hello frame: what the source announces, and its module, checked against its
/// digest.
fn parse_hello(tag: u8, body: &[u8]) -> Result<(Hello, Vec<u8>), SnapshotError> {
    if tag != b'H' {
        return Err(protocol("expected a hello frame"));
    }
    let mut c = payload(body);
    let hello: Hello = parse_json(&mut c)?;
    if hello.protocol != PROTOCOL {
        return Err(protocol(format!(
            "the source speaks migration protocol {}, this Tern {PROTOCOL}; migrate between the same Tern versions",
            hello.protocol
        )));
    }
    let module = crate::format::decompress_bounded(c.rest(), crate::format::MAX_MODULE)
        .map_err(|e| protocol(format!("bad module: {e}")))?;
    if hex::encode(Sha256::digest(&module)) != hello.module_digest {
        return Err(protocol("module does not match its digest"));
    }
    Ok((hello, module))
}

/// Reads the magic a migration starts with, within [`GREET_TIMEOUT`]; from then on,
/// the peer must say something at least every [`PEER_TIMEOUT`].
fn greet(stream: &TcpStream) -> Result<(), SnapshotError> {
    stream
        .set_read_timeout(Some(GREET_TIMEOUT))
        .map_err(local)?;
    let mut magic = [0u8; MAGIC.len()];
    let mut r = stream;
    r.read_exact(&mut magic).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            MigrationFailure::TimedOut {
                what: "sent nothing",
                waited: GREET_TIMEOUT,
            }
            .here()
        }
        _ => lost(e),
    })?;
    stream.set_read_timeout(Some(PEER_TIMEOUT)).map_err(local)?;
    if &magic != MAGIC {
        let shown: String = magic
            .iter()
            .map(|b| {
                if b.is_ascii_graphic() || *b == b' ' {
                    *b as char
                } else {
                    '.'
                }
            })
            .collect();
        return Err(protocol(format!(
            "not a Tern migration (it began with {shown:?}); dropped"
        )));
    }
    Ok(())
}

/// Stages the blocks of one file frame.
fn stage_file(c: &mut Cursor<'_>, staging: &mut Staging) -> Result<(), SnapshotError> {
    let h: FileHeader = parse_json(c)?;
    let count = c.u32()?;
    let mut blocks = Vec::new();
    for _ in 0..count {
        let index = u64::from(c.u32()?);
        let data = crate::format::decompress_bounded(c.block()?, BLOCK)
            .map_err(|e| protocol(format!("{}: {e}", h.path)))?;
        blocks.push(Ok((index, data)));
    }
    staging.write(&h, blocks)
}

/// The start of a well-formed migration stream: the magic and a hello for a tiny module
/// with one read-write volume, `/data`. The fuzz target puts it in front of arbitrary
/// frames so that the fuzzer reaches them past the hello's digest.
#[doc(hidden)]
pub fn fuzz_hello() -> Vec<u8> {
    let module = b"\0asm\x01\0\0\0".to_vec();
    let hello = Hello {
        protocol: PROTOCOL,
        format_version: crate::FORMAT_VERSION,
        module_digest: hex::encode(Sha256::digest(&module)),
        volumes: vec![("/data".into(), false)],
    };
    let mut out = MAGIC.to_vec();
    let compressed = lz4_flex::compress_prepend_size(&module);
    // Writing to a Vec cannot fail.
    let _ = write_frame(&mut out, b'H', &json_frame(&hello, &compressed));
    out
}

/// The receiving side of a migration stream on arbitrary bytes, without an engine, for
/// the `migration_receive` fuzz target: the magic, the hello, then every frame applied to
/// a plain memory of at most 64 pages and to a stage of the read-write volume `/data` in
/// `dir`. It returns an error or `Ok`, and never panics; nothing is committed.
#[doc(hidden)]
pub fn fuzz_receive(bytes: &[u8], dir: &std::path::Path) -> Result<(), SnapshotError> {
    struct Plain(Vec<u8>);
    impl Memory for Plain {
        fn resize(&mut self, pages: u32) -> Result<(), SnapshotError> {
            if pages > 64 {
                return Err(protocol("over the memory limit"));
            }
            let want = pages as usize * PAGE;
            if want < self.0.len() {
                return Err(protocol("memory shrinks"));
            }
            self.0.resize(want, 0);
            Ok(())
        }
        fn page_mut(&mut self, index: u32) -> Result<&mut [u8], SnapshotError> {
            let at = index as usize * PAGE;
            self.0
                .get_mut(at..at + PAGE)
                .ok_or_else(|| protocol("page outside memory"))
        }
    }
    let mut r = bytes;
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(lost)?;
    if &magic != MAGIC {
        return Err(protocol("not a Tern migration"));
    }
    let (tag, body) = read_frame(&mut r)?;
    let (hello, _module) = parse_hello(tag, &body)?;
    let dirs = [Preopen {
        host: dir.to_owned(),
        guest: "/data".into(),
        access: DirAccess::ReadWrite,
    }];
    let mut staging = Staging::new(&dirs, &hello.volumes)?;
    let mut memory = Plain(Vec::new());
    let mut echo = std::io::sink();
    loop {
        let (tag, body) = read_frame(&mut r)?;
        if apply_frame(tag, &body, &mut memory, &mut staging, &mut echo)?.is_some() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::{max_frame, put_block};
    use super::*;
    use crate::format::WasiState;

    /// A whole stream as a source sends it: magic, hello, a page, a file, a round's end,
    /// the final frame.
    fn stream() -> Vec<u8> {
        let module = b"\0asm\x01\0\0\0".to_vec();
        let mut out = fuzz_hello();
        let mut pages = Vec::new();
        pages.extend_from_slice(&2u32.to_le_bytes());
        pages.extend_from_slice(&1u32.to_le_bytes());
        pages.extend_from_slice(&1u32.to_le_bytes());
        put_block(&mut pages, &lz4_flex::compress(&[7u8; PAGE]));
        write_frame(&mut out, b'P', &pages).expect("pages");
        let header = FileHeader {
            volume: "/data".into(),
            path: "a.txt".into(),
            size: 5,
            mode: 0o644,
            mtime_ns: 0,
        };
        let mut blocks = 1u32.to_le_bytes().to_vec();
        blocks.extend_from_slice(&0u32.to_le_bytes());
        put_block(&mut blocks, &lz4_flex::compress_prepend_size(b"hello"));
        write_frame(&mut out, b'F', &json_frame(&header, &blocks)).expect("file");
        write_frame(&mut out, b'K', &[]).expect("round");
        let meta = Meta {
            module_digest: hex::encode(Sha256::digest(&module)),
            rewrite_digest: String::new(),
            memory_pages: 2,
            globals: Vec::new(),
            unwind: Vec::new(),
            wasi: WasiState::default(),
            writer: "test".into(),
        };
        write_frame(&mut out, b'Z', &serde_json::to_vec(&meta).expect("meta")).expect("final");
        out
    }

    /// The fuzz entry point takes a well-formed stream to its end, and refuses every
    /// truncation and every single-byte change of it with an error, never a panic.
    #[test]
    fn the_receiving_side_reads_a_stream_and_refuses_damage() {
        let d = tempfile::tempdir().expect("tmp");
        let vol = d.path().join("vol");
        std::fs::create_dir(&vol).expect("mkdir");
        let good = stream();
        fuzz_receive(&good, &vol).expect("a well-formed stream");
        for n in 0..good.len() {
            assert!(
                fuzz_receive(&good[..n], &vol).is_err(),
                "cut at {n} accepted"
            );
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            let _ = fuzz_receive(&bad, &vol);
        }
        // Nothing was committed: the volume is as it was, and no stage is left.
        assert_eq!(std::fs::read_dir(&vol).expect("vol").count(), 0);
        assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 1);
    }

    /// Lengths are refused by kind before anything is allocated.
    #[test]
    fn frame_lengths_are_bounded_by_kind() {
        let mut huge = 0x7fff_ffffu32.to_le_bytes().to_vec();
        huge.push(b'P');
        let e = read_frame(&mut huge.as_slice()).expect_err("2 GiB of pages");
        assert!(e.to_string().contains("where the protocol allows"), "{e}");
        let mut small = 100u32.to_le_bytes().to_vec();
        small.push(b'K');
        small.extend_from_slice(&[0u8; 99]);
        assert!(read_frame(&mut small.as_slice()).is_ok());
        assert!(max_frame(b'P') < 20 << 20 && max_frame(b'F') < 5 << 20);
    }
}
