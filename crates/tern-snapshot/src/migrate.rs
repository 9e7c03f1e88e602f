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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tern_runtime::{DirAccess, Limits, Policy, Preopen};

use crate::SnapshotError;
use crate::format::{Meta, PAGE};
use crate::live::{Captured, Checkpoint, Migratable, RunEnd, Trigger};
use crate::sync::{
    BLOCK, Expected, FileEntry, FileHeader, FileIndex, Staging, VolumeOffer, list_files,
    read_blocks,
};

/// Blocks of one file sent in one frame (4 MiB), so a large file never makes one huge
/// frame.
const BLOCKS_PER_FRAME: usize = 64;
/// Version of this protocol; both sides must speak the same.
const PROTOCOL: u32 = 2;
/// Most pre-copy rounds before the final stop.
const MAX_ROUNDS: u32 = 6;
/// A round that sends fewer pages than this is followed by the final stop.
const SMALL_DELTA_PAGES: usize = 64;
/// How long the source waits for any answer of the destination.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// What a migration stream starts with, before its first frame: anything else is not
/// a Tern migration, and is dropped after eight bytes.
const MAGIC: &[u8; 8] = b"TERNMIG\x02";
/// Pages sent in one frame at most (16 MiB), so that no frame needs more memory than that
/// to be read.
const PAGES_PER_FRAME: usize = 256;
/// How long a receiver waits for a new connection's first bytes: a source sends them
/// at once, and a peer that stalls must not keep the next one waiting long.
const GREET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a receiver waits for its peer to say anything, after the first bytes.
const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Room for a frame's JSON header.
const HEADER_ROOM: usize = 64 << 10;

/// The largest frame of each kind the protocol allows: a length above it is refused
/// before anything is allocated for it.
fn max_frame(tag: u8) -> usize {
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

/// Why a migration did not happen when the guest ran to its end first.
const ENDED: &str = "the guest finished before the migration";

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

/// What a finished migration measured, for the source to print.
#[derive(Debug, Clone, Default)]
pub struct MigrationStats {
    /// Pre-copy rounds, the final one included.
    pub rounds: u32,
    /// Bytes written to the destination.
    pub bytes_sent: u64,
    /// From the guest's last stop to the destination's confirmation.
    pub downtime: Duration,
    /// From connecting to the confirmation.
    pub total: Duration,
}

fn net(reason: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Migration {
        reason: reason.to_string(),
    }
}

fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> Result<u64, SnapshotError> {
    let len = u32::try_from(payload.len() + 1).map_err(|_| net("frame too large"))?;
    w.write_all(&len.to_le_bytes()).map_err(net)?;
    w.write_all(&[tag]).map_err(net)?;
    w.write_all(payload).map_err(net)?;
    Ok(payload.len() as u64 + 5)
}

/// What a failed read of the peer's stream means, in words.
fn lost(e: std::io::Error) -> SnapshotError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof => net("the peer closed the connection"),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => net(format!(
            "the peer did not answer within {} s",
            REPLY_TIMEOUT.as_secs()
        )),
        _ => net(format!("connection lost: {e}")),
    }
}

/// Reads one frame, refusing a length above what its kind allows ([`max_frame`])
/// before allocating, and allocating only as its bytes arrive.
fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), SnapshotError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(lost)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let tag = head[4];
    if len == 0 {
        return Err(net("a frame of length 0"));
    }
    let max = max_frame(tag);
    if len - 1 > max {
        return Err(net(format!(
            "a frame {:?} of {len} bytes, where the protocol allows {max}",
            tag as char
        )));
    }
    let mut body = Vec::with_capacity((len - 1).min(1 << 20));
    r.take(len as u64 - 1)
        .read_to_end(&mut body)
        .map_err(lost)?;
    if body.len() != len - 1 {
        return Err(net("the peer closed the connection inside a frame"));
    }
    Ok((tag, body))
}

/// Reads fields of a frame payload, refusing anything short.
struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.b.len() < n {
            return Err(net("truncated frame"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn block(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn put_block(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// JSON header, then binary rest: `u32` JSON length first.
fn json_frame<T: Serialize>(header: &T, rest: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + rest.len() + 4);
    put_block(&mut out, &json);
    out.extend_from_slice(rest);
    out
}

fn parse_json<'a, T: Deserialize<'a>>(c: &mut Cursor<'a>) -> Result<T, SnapshotError> {
    serde_json::from_slice(c.block()?).map_err(|e| net(format!("bad header: {e}")))
}

/// One round: the guest's metadata and the pages that changed since the last round.
struct Delta {
    meta: Meta,
    pages: Vec<(u32, Vec<u8>)>,
    /// Files the guest has open or has changed, by volume and path.
    touched: Vec<(String, String)>,
    /// When the guest stopped at the safe point of this capture: the last one's is where
    /// downtime starts.
    paused: Instant,
}

/// Compares memory with the copy of what was sent, page by page, on the guest's thread
/// while it is paused: only changed pages are copied (once into `sent`, once into the
/// delta), so a round costs a read of memory plus the changes.
fn page_delta(sent: &mut HashMap<u32, Vec<u8>>, captured: Captured<'_>) -> Delta {
    let paused = Instant::now();
    let mut pages = Vec::new();
    for (i, page) in captured.memory().chunks(PAGE).enumerate() {
        let i = i as u32;
        let changed = match sent.get(&i) {
            Some(old) => old.as_slice() != page,
            None => page.iter().any(|b| *b != 0),
        };
        if changed {
            sent.insert(i, page.to_vec());
            pages.push((i, page.to_vec()));
        }
    }
    Delta {
        touched: captured.touched().to_vec(),
        meta: captured.meta,
        pages,
        paused,
    }
}

/// The source side of a migration, driven by [`migrate_run`].
struct Source {
    stream: BufWriter<TcpStream>,
    replies: BufReader<TcpStream>,
    volumes: Vec<Preopen>,
    /// The destination's files of each read-write volume as they will be once what
    /// was sent is applied, by (volume, path).
    there: BTreeMap<(String, String), FileEntry>,
    /// Volumes the destination maps read-only: only checked.
    checked: BTreeSet<String>,
    /// What was last sent for the checked files.
    expected: BTreeMap<(String, String), Option<String>>,
    index: FileIndex,
    /// Files the destination had that the source did not have when the migration
    /// began: they are the destination's own, and left alone.
    kept: Vec<(String, String)>,
    /// Whether files were compared yet.
    compared: bool,
    bytes: u64,
}

impl Source {
    fn connect(
        addr: &str,
        migratable: &Migratable,
        volumes: Vec<Preopen>,
        line: &Line,
    ) -> Result<Source, SnapshotError> {
        let target = addr
            .to_socket_addrs()
            .map_err(|e| net(format!("cannot resolve {addr}: {e}")))?
            .next()
            .ok_or_else(|| net(format!("{addr} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .map_err(|e| net(format!("cannot connect to {addr}: {e}")))?;
        if !line.open(&stream) {
            return Err(net(ENDED));
        }
        stream.set_nodelay(true).map_err(net)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(net)?;
        let replies = BufReader::new(stream.try_clone().map_err(net)?);
        let mut s = Source {
            stream: BufWriter::with_capacity(1 << 20, stream),
            replies,
            volumes,
            there: BTreeMap::new(),
            checked: BTreeSet::new(),
            expected: BTreeMap::new(),
            index: FileIndex::default(),
            kept: Vec::new(),
            compared: false,
            bytes: 0,
        };
        let hello = Hello {
            protocol: PROTOCOL,
            format_version: crate::FORMAT_VERSION,
            module_digest: migratable.digest().to_owned(),
            volumes: s
                .volumes
                .iter()
                .map(|v| (v.guest.clone(), v.access == DirAccess::ReadOnly))
                .collect(),
        };
        let module = lz4_flex::compress_prepend_size(migratable.original());
        s.stream.write_all(MAGIC).map_err(net)?;
        s.bytes += MAGIC.len() as u64;
        s.bytes += write_frame(&mut s.stream, b'H', &json_frame(&hello, &module))?;
        s.stream.flush().map_err(net)?;
        let offers: Vec<VolumeOffer> = serde_json::from_slice(&s.expect(b'A')?)
            .map_err(|e| net(format!("bad accept frame: {e}")))?;
        for o in offers {
            if o.read_only {
                s.checked.insert(o.guest);
                continue;
            }
            for f in o.files {
                s.there.insert((o.guest.clone(), f.path.clone()), f);
            }
        }
        Ok(s)
    }

    /// Reads the destination's next frame; its payload when it is `ok`.
    fn expect(&mut self, ok: u8) -> Result<Vec<u8>, SnapshotError> {
        let (tag, body) = read_frame(&mut self.replies)?;
        match tag {
            t if t == ok => Ok(body),
            b'E' => Err(net(format!(
                "the destination refused: {}",
                String::from_utf8_lossy(&body)
            ))),
            other => Err(net(format!("unexpected reply {:?}", other as char))),
        }
    }

    /// Sends a round's changed pages; returns how many.
    fn send_pages(&mut self, delta: &Delta) -> Result<usize, SnapshotError> {
        // At least one frame, even with no page: it carries the memory's size.
        let mut chunks: Vec<&[(u32, Vec<u8>)]> = delta.pages.chunks(PAGES_PER_FRAME).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for chunk in chunks {
            let mut body = Vec::with_capacity(8 + chunk.len() * 8192);
            body.extend_from_slice(&delta.meta.memory_pages.to_le_bytes());
            body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for (i, page) in chunk {
                body.extend_from_slice(&i.to_le_bytes());
                put_block(&mut body, &lz4_flex::compress(page));
            }
            self.bytes += write_frame(&mut self.stream, b'P', &body)?;
        }
        Ok(delta.pages.len())
    }

    /// Brings the destination's copy of each read-write volume up to the source's:
    /// blocks that differ, files that are gone; and sends the SHA-256 of each file the
    /// guest uses in a volume the destination only checks.
    fn send_files(&mut self, touched: &[(String, String)]) -> Result<(), SnapshotError> {
        for v in self.volumes.clone() {
            let read = |e: std::io::Error| net(format!("reading volume {}: {e}", v.host.display()));
            if self.checked.contains(&v.guest) {
                for (volume, path) in touched.iter().filter(|(vol, _)| *vol == v.guest) {
                    if crate::volumes::inside(&v.host, path).is_none() {
                        continue;
                    }
                    let sha = self.index.get(&v.host, path).map_err(read)?.map(|(_, s)| s);
                    let key = (volume.clone(), path.clone());
                    if self.expected.get(&key) == Some(&sha) {
                        continue;
                    }
                    let e = Expected {
                        volume: volume.clone(),
                        path: path.clone(),
                        sha256: sha.clone(),
                    };
                    self.bytes += write_frame(&mut self.stream, b'V', &json_frame(&e, &[]))?;
                    self.expected.insert(key, sha);
                }
                continue;
            }
            let files = list_files(&v.host).map_err(read)?;
            if !self.compared {
                let theirs: Vec<(String, String)> = self
                    .there
                    .keys()
                    .filter(|(vol, path)| *vol == v.guest && files.binary_search(path).is_err())
                    .cloned()
                    .collect();
                for key in theirs {
                    self.there.remove(&key);
                    self.kept.push(key);
                }
            }
            for rel in &files {
                let Some((entry, _)) = self.index.get(&v.host, rel).map_err(read)? else {
                    continue;
                };
                let key = (v.guest.clone(), rel.clone());
                let old = self.there.get(&key);
                if old == Some(&entry) {
                    continue;
                }
                let changed: Vec<usize> = (0..entry.blocks.len())
                    .filter(|i| old.and_then(|o| o.blocks.get(*i)) != Some(&entry.blocks[*i]))
                    .collect();
                let header = FileHeader {
                    volume: v.guest.clone(),
                    path: rel.clone(),
                    size: entry.size,
                    mode: entry.mode,
                    mtime_ns: entry.mtime_ns,
                };
                // At least one frame, even with no block: the size, mode or mtime
                // changed.
                let mut chunks: Vec<&[usize]> = changed.chunks(BLOCKS_PER_FRAME).collect();
                if chunks.is_empty() {
                    chunks.push(&[]);
                }
                for chunk in chunks {
                    let blocks = read_blocks(&v.host, rel, chunk).map_err(read)?;
                    let mut rest = Vec::new();
                    rest.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
                    for (i, data) in blocks {
                        rest.extend_from_slice(&(i as u32).to_le_bytes());
                        put_block(&mut rest, &lz4_flex::compress_prepend_size(&data));
                    }
                    self.bytes += write_frame(&mut self.stream, b'F', &json_frame(&header, &rest))?;
                }
                self.there.insert(key, entry);
            }
            let gone: Vec<(String, String)> = self
                .there
                .keys()
                .filter(|(vol, path)| *vol == v.guest && files.binary_search(path).is_err())
                .cloned()
                .collect();
            for (volume, path) in gone {
                let g = Gone {
                    volume: volume.clone(),
                    path: path.clone(),
                };
                self.bytes += write_frame(&mut self.stream, b'D', &json_frame(&g, &[]))?;
                self.there.remove(&(volume, path));
            }
        }
        self.compared = true;
        Ok(())
    }

    fn finish(&mut self, delta: &Delta) -> Result<(), SnapshotError> {
        self.send_pages(delta)?;
        self.send_files(&delta.touched)?;
        let meta = serde_json::to_vec(&delta.meta).map_err(net)?;
        self.bytes += write_frame(&mut self.stream, b'Z', &meta)?;
        self.stream.flush().map_err(net)?;
        self.expect(b'R').map(drop)
    }
}

/// How a migrating run ended on the source.
#[derive(Debug)]
pub enum MigrateEnd {
    /// The destination confirmed the restore; the guest goes on there.
    Migrated(MigrationStats),
    /// The guest ran to its end here: it finished before the migration, or the migration
    /// failed (the reason is given) and the guest resumed here.
    Finished {
        outcome: tern_runtime::Outcome,
        failure: Option<String>,
    },
}

/// Runs `migratable` under `policy` and, after `after`, live-migrates it to `addr`.
/// `progress` receives one line per round.
///
/// # Errors
/// Only what [`Migratable::run`] returns; a failed migration is not an error, the guest
/// resumes and [`MigrateEnd::Finished`] carries the reason.
pub fn migrate_run(
    migratable: &Migratable,
    policy: &Policy,
    limits: &Limits,
    addr: &str,
    after: Duration,
    progress: impl Fn(&str) + Send + 'static,
) -> Result<MigrateEnd, SnapshotError> {
    let trigger = Trigger::new();
    // The guest thread hands each captured snapshot to the controller and waits for its
    // verdict: carry on (pre-copy) or stop (the destination has the guest now).
    let (snap_tx, snap_rx) = mpsc::channel::<Delta>();
    let (verdict_tx, verdict_rx) = mpsc::channel::<Checkpoint>();
    // The connection, so that a guest that ends does not wait on a destination that
    // is slow to answer: the controller's read fails at once.
    let line = Line::default();
    let controller = {
        let line = line.clone();
        let trigger = trigger.clone();
        let migratable = migratable.clone();
        let addr = addr.to_owned();
        let volumes = policy.preopens.clone();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                let r = control(
                    &migratable,
                    &addr,
                    after,
                    volumes,
                    &trigger,
                    &snap_rx,
                    &verdict_tx,
                    &progress,
                    &line,
                );
                match &r {
                    Err(_) if line.ended() => {
                        progress("migration: the guest finished here before it could be migrated");
                    }
                    Err(SnapshotError::Migration { reason }) if reason == ENDED => {
                        progress("migration: the guest finished here before it could be migrated");
                    }
                    Err(e) => progress(&format!("{e}; the guest keeps running here")),
                    Ok(_) => {}
                }
                r
            })
            .map_err(|e| net(format!("cannot start the migration thread: {e}")))?
    };
    let mut sent_pages = HashMap::new();
    let end = migratable.run(policy, limits, &trigger, |captured| {
        let delta = page_delta(&mut sent_pages, captured);
        if snap_tx.send(delta).is_err() {
            return Checkpoint::Continue;
        }
        verdict_rx.recv().unwrap_or(Checkpoint::Continue)
    })?;
    drop(snap_tx);
    if matches!(end, RunEnd::Finished(_)) {
        line.hang_up();
    }
    let result = controller
        .join()
        .unwrap_or_else(|_| Err(net("migration thread panicked")));
    Ok(match (end, result) {
        (RunEnd::Stopped, Ok(stats)) => MigrateEnd::Migrated(stats),
        (RunEnd::Stopped, Err(e)) => {
            // Cannot happen: the controller only says Stop after a confirmation.
            return Err(e);
        }
        (RunEnd::Finished(outcome), result) => MigrateEnd::Finished {
            outcome,
            failure: result.err().map(|e| e.to_string()),
        },
    })
}

/// The source's connection, shared between the controller and the guest's thread.
#[derive(Clone, Default)]
struct Line(Arc<Mutex<(Option<TcpStream>, bool)>>);

impl Line {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<TcpStream>, bool)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the connection; `false` when the guest has ended already.
    fn open(&self, stream: &TcpStream) -> bool {
        let mut l = self.lock();
        l.0 = stream.try_clone().ok();
        !l.1
    }

    /// The guest has ended: whatever the controller is waiting for, it stops waiting.
    fn hang_up(&self) {
        let mut l = self.lock();
        l.1 = true;
        if let Some(s) = &l.0 {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn ended(&self) -> bool {
        self.lock().1
    }
}

#[allow(clippy::too_many_arguments)]
fn control(
    migratable: &Migratable,
    addr: &str,
    after: Duration,
    volumes: Vec<Preopen>,
    trigger: &Trigger,
    snapshots: &mpsc::Receiver<Delta>,
    verdict: &mpsc::Sender<Checkpoint>,
    progress: &dyn Fn(&str),
    line: &Line,
) -> Result<MigrationStats, SnapshotError> {
    // Wait, unless the guest ends first (no snapshot is sent before the trigger fires).
    match snapshots.recv_timeout(after) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        _ => return Err(net(ENDED)),
    }
    let started = Instant::now();
    let mut source = Source::connect(addr, migratable, volumes, line)?;
    progress(&format!("migration: connected to {addr}, pre-copying"));
    let r = precopy(
        &mut source,
        addr,
        trigger,
        snapshots,
        verdict,
        progress,
        started,
    );
    if let Err(e) = &r {
        // Tell the destination why, so it says more than that the line went dead.
        let _ = write_frame(&mut source.stream, b'E', reason_of(e).as_bytes());
        let _ = source.stream.flush();
    }
    r
}

/// The rounds of a migration, the final one included.
fn precopy(
    source: &mut Source,
    addr: &str,
    trigger: &Trigger,
    snapshots: &mpsc::Receiver<Delta>,
    verdict: &mpsc::Sender<Checkpoint>,
    progress: &dyn Fn(&str),
    started: Instant,
) -> Result<MigrationStats, SnapshotError> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        trigger.fire();
        let Ok(snapshot) = snapshots.recv() else {
            return Err(net(ENDED));
        };
        refuse_stdin_readers(&snapshot.meta, addr)?;
        let last = rounds >= MAX_ROUNDS;
        if !last {
            // Pre-copy: let the guest run on while this round goes out.
            let _ = verdict.send(Checkpoint::Continue);
            let changed = source.send_pages(&snapshot).and_then(|n| {
                source.send_files(&snapshot.touched)?;
                source.bytes += write_frame(&mut source.stream, b'K', &[])?;
                source.stream.flush().map_err(net)?;
                // The guest runs on meanwhile; only the next round waits.
                source.expect(b'K')?;
                Ok(n)
            });
            let changed = changed?;
            progress(&format!(
                "migration: round {rounds}: {changed} pages ({} KiB sent so far)",
                source.bytes / 1024
            ));
            if rounds == 1 && !source.kept.is_empty() {
                progress(&kept_note(&source.kept));
            }
            if changed > SMALL_DELTA_PAGES || rounds == 1 {
                continue;
            }
            // Small enough: stop for good in the next round.
            rounds += 1;
            trigger.fire();
            let Ok(snapshot) = snapshots.recv() else {
                return Err(net(ENDED));
            };
            refuse_stdin_readers(&snapshot.meta, addr)?;
            return finish(source, &snapshot, verdict, rounds, started);
        }
        return finish(source, &snapshot, verdict, rounds, started);
    }
}

/// Says which files of its own the destination keeps.
fn kept_note(kept: &[(String, String)]) -> String {
    let names: Vec<String> = kept
        .iter()
        .take(3)
        .map(|(v, p)| format!("{v}/{p}"))
        .collect();
    let more = if kept.len() > 3 { ", …" } else { "" };
    format!(
        "migration: the destination keeps {} file(s) of its own that the source does not have ({}{more}); the guest will see them there",
        kept.len(),
        names.join(", ")
    )
}

/// A guest that has read its stdin is not migrated: the rest of that input is a pipe,
/// file or terminal of this machine, which cannot follow it, and forwarding it would tie
/// the source to the guest for as long as it reads. (A guest that has not read stdin yet
/// reads the destination's.)
fn refuse_stdin_readers(meta: &Meta, addr: &str) -> Result<(), SnapshotError> {
    match meta.wasi.stdin_consumed {
        0 => Ok(()),
        n => Err(net(format!(
            "the guest has read {n} bytes of its stdin, which cannot follow it to {addr}"
        ))),
    }
}

fn finish(
    source: &mut Source,
    snapshot: &Delta,
    verdict: &mpsc::Sender<Checkpoint>,
    rounds: u32,
    started: Instant,
) -> Result<MigrationStats, SnapshotError> {
    match source.finish(snapshot) {
        Ok(()) => {
            let _ = verdict.send(Checkpoint::Stop);
            Ok(MigrationStats {
                rounds,
                bytes_sent: source.bytes,
                // From the guest's stop at its last safe point (the final delta is
                // computed while it waits) to the destination's confirmation.
                downtime: snapshot.paused.elapsed(),
                total: started.elapsed(),
            })
        }
        Err(e) => {
            let _ = verdict.send(Checkpoint::Continue);
            Err(e)
        }
    }
}

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
    // Until a migration is accepted, a connection that fails (not a Tern migration, a
    // peer that says nothing, a hello that cannot be accepted) is dropped with one line
    // and the next one is awaited: no peer can end the receiver before it commits to one.
    let (peer, accepted) = loop {
        let (stream, peer) = listener.accept().map_err(net)?;
        match greet(&stream).and_then(|()| accept(stream, engine, rewriter, dirs, limits)) {
            Ok(a) => break (peer, a),
            Err(e) => progress(&format!(
                "receive: {peer}: {}; still listening",
                reason_of(&e)
            )),
        }
    };
    progress(&format!("receive: migration from {peer}"));
    let Accepted {
        mut reader,
        mut replies,
        migratable,
        trigger,
        mut prepared,
        mut staging,
    } = accepted;
    let refuse = |w: &mut TcpStream, e: SnapshotError| {
        let _ = write_frame(w, b'E', reason_of(&e).as_bytes());
        e
    };
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
    let mut confirm = replies.try_clone().map_err(net)?;
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
            confirm.flush().map_err(net)?;
            committed.finish();
            Ok(())
        },
        |_| Checkpoint::Continue,
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
    dirs: &[Preopen],
    limits: &Limits,
) -> Result<Accepted, SnapshotError> {
    stream.set_nodelay(true).map_err(net)?;
    let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone().map_err(net)?);
    let mut replies = stream;
    let refuse = |w: &mut TcpStream, e: SnapshotError| {
        let _ = write_frame(w, b'E', reason_of(&e).as_bytes());
        e
    };
    let (tag, body) = read_frame(&mut reader)?;
    let (hello, module) = parse_hello(tag, &body).map_err(|e| refuse(&mut replies, e))?;
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
    let trigger = Trigger::new();
    let prepared = match migratable.prepare(limits, &trigger) {
        Ok(Ok(p)) => p,
        Ok(Err(outcome)) => {
            return Err(refuse(
                &mut replies,
                net(format!(
                    "the guest cannot be instantiated here: {outcome:?}"
                )),
            ));
        }
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    let offer = match staging.offer() {
        Ok(o) => serde_json::to_vec(&o).map_err(net)?,
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

/// Applies one frame of the rounds: pages into `memory`, files into `staging`, a round's
/// end echoed on `replies`. The final frame's metadata is `Some`.
fn apply_frame(
    tag: u8,
    body: &[u8],
    memory: &mut impl Memory,
    staging: &mut Staging,
    replies: &mut impl Write,
) -> Result<Option<Meta>, SnapshotError> {
    let mut c = Cursor { b: body };
    match tag {
        b'P' => apply_pages(&mut c, memory),
        b'F' => stage_file(&mut c, staging),
        b'D' => parse_json::<Gone>(&mut c).and_then(|g| staging.delete(&g.volume, &g.path)),
        b'V' => parse_json::<Expected>(&mut c).and_then(|e| staging.verify(&e)),
        b'K' => write_frame(replies, b'K', &[]).and_then(|_| replies.flush().map_err(net)),
        b'E' => Err(net(format!(
            "the source gave up: {}",
            String::from_utf8_lossy(body)
        ))),
        b'Z' => {
            return serde_json::from_slice(body)
                .map(Some)
                .map_err(|e| net(format!("bad final frame: {e}")));
        }
        other => Err(net(format!("unexpected frame {:?}", other as char))),
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
        return Err(net("more than 4 GiB of memory"));
    }
    memory.resize(total)?;
    for _ in 0..count {
        let index = c.u32()?;
        if index >= total {
            return Err(net("page index out of range"));
        }
        let block = c.block()?;
        let page = memory.page_mut(index)?;
        if block.is_empty() {
            page.fill(0);
            continue;
        }
        match lz4_flex::block::decompress_into(block, page) {
            Ok(n) if n == PAGE => {}
            Ok(_) => return Err(net(format!("page {index} is not 64 KiB"))),
            Err(e) => return Err(net(format!("page {index}: {e}"))),
        }
    }
    Ok(())
}

/// The hello frame: what the source announces, and its module, checked against its
/// digest.
fn parse_hello(tag: u8, body: &[u8]) -> Result<(Hello, Vec<u8>), SnapshotError> {
    if tag != b'H' {
        return Err(net("expected a hello frame"));
    }
    let mut c = Cursor { b: body };
    let hello: Hello = parse_json(&mut c)?;
    if hello.protocol != PROTOCOL {
        return Err(net(format!(
            "the source speaks migration protocol {}, this Tern {PROTOCOL}; migrate between the same Tern versions",
            hello.protocol
        )));
    }
    let module = crate::format::decompress_bounded(c.b, crate::format::MAX_MODULE)
        .map_err(|e| net(format!("bad module: {e}")))?;
    if hex::encode(Sha256::digest(&module)) != hello.module_digest {
        return Err(net("module does not match its digest"));
    }
    Ok((hello, module))
}

/// Reads the magic a migration starts with, within [`GREET_TIMEOUT`]; from then on,
/// the peer must say something at least every [`PEER_TIMEOUT`].
fn greet(stream: &TcpStream) -> Result<(), SnapshotError> {
    stream.set_read_timeout(Some(GREET_TIMEOUT)).map_err(net)?;
    let mut magic = [0u8; MAGIC.len()];
    let mut r = stream;
    r.read_exact(&mut magic).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => net(format!(
            "sent nothing within {} s; dropped",
            GREET_TIMEOUT.as_secs()
        )),
        _ => lost(e),
    })?;
    stream.set_read_timeout(Some(PEER_TIMEOUT)).map_err(net)?;
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
        return Err(net(format!(
            "not a Tern migration (it began with {shown:?}); dropped"
        )));
    }
    Ok(())
}

/// What to tell the peer of `e`: its reason, without the "migration failed" the peer
/// adds itself.
fn reason_of(e: &SnapshotError) -> String {
    match e {
        SnapshotError::Migration { reason } => reason.clone(),
        other => other.to_string(),
    }
}

/// Stages the blocks of one file frame.
fn stage_file(c: &mut Cursor<'_>, staging: &mut Staging) -> Result<(), SnapshotError> {
    let h: FileHeader = parse_json(c)?;
    let count = c.u32()?;
    let mut blocks = Vec::new();
    for _ in 0..count {
        let index = u64::from(c.u32()?);
        let data = crate::format::decompress_bounded(c.block()?, BLOCK)
            .map_err(|e| net(format!("{}: {e}", h.path)))?;
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
                return Err(net("over the memory limit"));
            }
            let want = pages as usize * PAGE;
            if want < self.0.len() {
                return Err(net("memory shrinks"));
            }
            self.0.resize(want, 0);
            Ok(())
        }
        fn page_mut(&mut self, index: u32) -> Result<&mut [u8], SnapshotError> {
            let at = index as usize * PAGE;
            self.0
                .get_mut(at..at + PAGE)
                .ok_or_else(|| net("page outside memory"))
        }
    }
    let mut r = bytes;
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(lost)?;
    if &magic != MAGIC {
        return Err(net("not a Tern migration"));
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
            unwind_data: 0,
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
