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
//! | `A` accept / `E` error | destination | nothing / a UTF-8 reason |
//! | `P` pages | source | `u32` memory pages, `u32` count, then per page `u32` index, `u32` length, LZ4 block (length 0: the page is now zero) |
//! | `F` file | source | JSON [`FileHeader`], `u32` count, then per block `u32` index, `u32` length, LZ4 block |
//! | `D` deleted | source | JSON [`FileHeader`] (size ignored) |
//! | `K` round end | source, then destination | nothing: the destination echoes it once every frame before it is applied |
//! | `Z` final | source | JSON [`Meta`] |
//! | `R` restored / `E` error | destination | nothing / a UTF-8 reason |
//!
//! A round's pages are those that differ from what was last sent (compared against the
//! copy kept of it), so no write barrier is needed in the guest. The source starts the
//! next round only when the destination has echoed the last one's `K`: on a slow link the
//! socket buffers would otherwise still hold earlier rounds when the guest stops, and
//! the stop would wait for them. Files are compared by
//! 64 KiB blocks with the hashes of what was sent.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tern_runtime::{Limits, Policy, Preopen};

use crate::SnapshotError;
use crate::format::{Meta, PAGE};
use crate::live::{Captured, Checkpoint, Migratable, RunEnd, Trigger};

/// Size of a file block compared and sent as a unit.
const BLOCK: usize = 64 * 1024;
/// Most pre-copy rounds before the final stop.
const MAX_ROUNDS: u32 = 6;
/// A round that sends fewer pages than this is followed by the final stop.
const SMALL_DELTA_PAGES: usize = 64;
/// How long the source waits for any answer of the destination.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest frame accepted (a module or a round of pages).
const MAX_FRAME: usize = 1 << 31;

/// Why a migration did not happen when the guest ran to its end first.
const ENDED: &str = "the guest finished before the migration";

/// First frame of a migration.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub format_version: u32,
    pub module_digest: String,
    /// Guest paths of the volumes, so the destination can refuse early.
    pub volumes: Vec<String>,
}

/// A file of a volume, by the volume's guest path and its path inside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileHeader {
    pub volume: String,
    pub path: String,
    pub size: u64,
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

fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), SnapshotError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .map_err(|e| net(format!("connection lost: {e}")))?;
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(net(format!("bad frame length {len}")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .map_err(|e| net(format!("connection lost: {e}")))?;
    let tag = buf.remove(0);
    Ok((tag, buf))
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

fn block_hash(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// What the source has sent of its volume files, to send only what changed.
#[derive(Default)]
struct Sent {
    /// Block hashes of each file last sent, by (volume, path).
    files: BTreeMap<(String, String), Vec<u64>>,
}

/// One round: the guest's metadata and the pages that changed since the last round.
struct Delta {
    meta: Meta,
    pages: Vec<(u32, Vec<u8>)>,
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
    sent: Sent,
    bytes: u64,
}

impl Source {
    fn connect(
        addr: &str,
        migratable: &Migratable,
        volumes: Vec<Preopen>,
    ) -> Result<Source, SnapshotError> {
        let target = addr
            .to_socket_addrs()
            .map_err(|e| net(format!("cannot resolve {addr}: {e}")))?
            .next()
            .ok_or_else(|| net(format!("{addr} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .map_err(|e| net(format!("cannot connect to {addr}: {e}")))?;
        stream.set_nodelay(true).map_err(net)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(net)?;
        let replies = BufReader::new(stream.try_clone().map_err(net)?);
        let mut s = Source {
            stream: BufWriter::with_capacity(1 << 20, stream),
            replies,
            volumes,
            sent: Sent::default(),
            bytes: 0,
        };
        let hello = Hello {
            format_version: crate::FORMAT_VERSION,
            module_digest: migratable.digest().to_owned(),
            volumes: s.volumes.iter().map(|v| v.guest.clone()).collect(),
        };
        let module = lz4_flex::compress_prepend_size(migratable.original());
        s.bytes += write_frame(&mut s.stream, b'H', &json_frame(&hello, &module))?;
        s.stream.flush().map_err(net)?;
        s.expect(b'A')?;
        Ok(s)
    }

    fn expect(&mut self, ok: u8) -> Result<(), SnapshotError> {
        let (tag, body) = read_frame(&mut self.replies)?;
        match tag {
            t if t == ok => Ok(()),
            b'E' => Err(net(format!(
                "the destination refused: {}",
                String::from_utf8_lossy(&body)
            ))),
            other => Err(net(format!("unexpected reply {:?}", other as char))),
        }
    }

    /// Sends a round's changed pages; returns how many.
    fn send_pages(&mut self, delta: &Delta) -> Result<usize, SnapshotError> {
        let mut body = Vec::with_capacity(8 + delta.pages.len() * 8192);
        body.extend_from_slice(&delta.meta.memory_pages.to_le_bytes());
        body.extend_from_slice(&(delta.pages.len() as u32).to_le_bytes());
        for (i, page) in &delta.pages {
            body.extend_from_slice(&i.to_le_bytes());
            put_block(&mut body, &lz4_flex::compress(page));
        }
        self.bytes += write_frame(&mut self.stream, b'P', &body)?;
        Ok(delta.pages.len())
    }

    /// Sends the blocks of volume files that changed since they were last sent, and
    /// the files that are gone.
    fn send_files(&mut self) -> Result<(), SnapshotError> {
        let mut seen = Vec::new();
        for v in self.volumes.clone() {
            let mut files = Vec::new();
            list_files(&v.host, Path::new(""), &mut files)
                .map_err(|e| net(format!("reading volume {}: {e}", v.host.display())))?;
            for rel in files {
                let key = (v.guest.clone(), rel.clone());
                let data = match std::fs::read(v.host.join(&rel)) {
                    Ok(d) => d,
                    // Removed while we looked: the next round sees it gone.
                    Err(_) => continue,
                };
                seen.push(key.clone());
                let hashes: Vec<u64> = data.chunks(BLOCK).map(block_hash).collect();
                let old = self.sent.files.get(&key);
                if old == Some(&hashes) {
                    continue;
                }
                let mut rest = Vec::new();
                let changed: Vec<usize> = (0..hashes.len())
                    .filter(|i| old.and_then(|o| o.get(*i)) != Some(&hashes[*i]))
                    .collect();
                rest.extend_from_slice(&(changed.len() as u32).to_le_bytes());
                for i in changed {
                    rest.extend_from_slice(&(i as u32).to_le_bytes());
                    let end = ((i + 1) * BLOCK).min(data.len());
                    put_block(
                        &mut rest,
                        &lz4_flex::compress_prepend_size(&data[i * BLOCK..end]),
                    );
                }
                let header = FileHeader {
                    volume: v.guest.clone(),
                    path: rel,
                    size: data.len() as u64,
                };
                self.bytes += write_frame(&mut self.stream, b'F', &json_frame(&header, &rest))?;
                self.sent.files.insert(key, hashes);
            }
        }
        let gone: Vec<(String, String)> = self
            .sent
            .files
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for (volume, path) in gone {
            let header = FileHeader {
                volume: volume.clone(),
                path: path.clone(),
                size: 0,
            };
            self.bytes += write_frame(&mut self.stream, b'D', &json_frame(&header, &[]))?;
            self.sent.files.remove(&(volume, path));
        }
        Ok(())
    }

    fn finish(&mut self, delta: &Delta) -> Result<(), SnapshotError> {
        self.send_pages(delta)?;
        self.send_files()?;
        let meta = serde_json::to_vec(&delta.meta).map_err(net)?;
        self.bytes += write_frame(&mut self.stream, b'Z', &meta)?;
        self.stream.flush().map_err(net)?;
        self.expect(b'R')
    }
}

/// Relative paths of the regular files under `dir`.
fn list_files(root: &Path, rel: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let name = rel.join(entry.file_name());
        if ty.is_dir() {
            list_files(root, &name, out)?;
        } else if ty.is_file() {
            out.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(())
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
    let controller = {
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
                );
                match &r {
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
) -> Result<MigrationStats, SnapshotError> {
    // Wait, unless the guest ends first (no snapshot is sent before the trigger fires).
    match snapshots.recv_timeout(after) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        _ => return Err(net(ENDED)),
    }
    let started = Instant::now();
    let mut source = Source::connect(addr, migratable, volumes)?;
    progress(&format!("migration: connected to {addr}, pre-copying"));
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
                source.send_files()?;
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
            return finish(&mut source, &snapshot, verdict, rounds, started);
        }
        return finish(&mut source, &snapshot, verdict, rounds, started);
    }
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
    let (stream, peer) = listener.accept().map_err(net)?;
    progress(&format!("receive: migration from {peer}"));
    stream.set_nodelay(true).map_err(net)?;
    let mut reader = BufReader::with_capacity(1 << 20, stream.try_clone().map_err(net)?);
    let mut replies = stream;
    let refuse = |w: &mut TcpStream, e: SnapshotError| {
        let _ = write_frame(w, b'E', e.to_string().as_bytes());
        e
    };
    let (tag, body) = read_frame(&mut reader)?;
    if tag != b'H' {
        return Err(refuse(&mut replies, net("expected a hello frame")));
    }
    let mut c = Cursor { b: &body };
    let hello: Hello = parse_json(&mut c)?;
    let module = crate::format::decompress_bounded(c.b, crate::format::MAX_MODULE)
        .map_err(|e| refuse(&mut replies, net(format!("bad module: {e}"))))?;
    if hex::encode(Sha256::digest(&module)) != hello.module_digest {
        return Err(refuse(
            &mut replies,
            net("module does not match its digest"),
        ));
    }
    if let Some(v) = hello
        .volumes
        .iter()
        .find(|v| !dirs.iter().any(|d| &d.guest == *v))
    {
        return Err(refuse(
            &mut replies,
            SnapshotError::UnmappedVolume { guest: v.clone() },
        ));
    }
    let migratable = match Migratable::new(engine, rewriter, &module) {
        Ok(m) => m,
        Err(e) => return Err(refuse(&mut replies, e)),
    };
    // The instance is made now, and memory filled in place as pre-copy rounds arrive,
    // so that the stop-and-copy phase only writes the last changes.
    let trigger = Trigger::new();
    let mut prepared = match migratable.prepare(limits, &trigger) {
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
    write_frame(&mut replies, b'A', &[])?;
    let meta: Meta = loop {
        let (tag, body) = read_frame(&mut reader)?;
        let mut c = Cursor { b: &body };
        let step = match tag {
            b'P' => apply_pages(&mut c, &mut prepared),
            b'F' => apply_file(&mut c, dirs),
            b'D' => parse_json::<FileHeader>(&mut c).and_then(|h| {
                let path = volume_path(dirs, &h)?;
                let _ = std::fs::remove_file(path);
                Ok(())
            }),
            b'K' => write_frame(&mut replies, b'K', &[]).and_then(|_| replies.flush().map_err(net)),
            b'Z' => match serde_json::from_slice(&body) {
                Ok(meta) => break meta,
                Err(e) => Err(net(format!("bad final frame: {e}"))),
            },
            other => Err(net(format!("unexpected frame {:?}", other as char))),
        };
        if let Err(e) = step {
            return Err(refuse(&mut replies, e));
        }
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
        || {
            write_frame(&mut confirm, b'R', &[])?;
            confirm.flush().map_err(net)
        },
        |_| Checkpoint::Continue,
    );
    if let Err(e) = &end {
        let _ = write_frame(&mut replies, b'E', e.to_string().as_bytes());
    }
    end
}

fn apply_pages(c: &mut Cursor<'_>, memory: &mut crate::Prepared) -> Result<(), SnapshotError> {
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

/// The host path of a volume file, refusing paths that leave the volume.
fn volume_path(dirs: &[Preopen], h: &FileHeader) -> Result<PathBuf, SnapshotError> {
    let dir =
        dirs.iter()
            .find(|d| d.guest == h.volume)
            .ok_or_else(|| SnapshotError::UnmappedVolume {
                guest: h.volume.clone(),
            })?;
    let rel = Path::new(&h.path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(net(format!("file path {} leaves its volume", h.path)));
    }
    Ok(dir.host.join(rel))
}

fn apply_file(c: &mut Cursor<'_>, dirs: &[Preopen]) -> Result<(), SnapshotError> {
    use std::io::{Seek, SeekFrom};
    let h: FileHeader = parse_json(c)?;
    let path = volume_path(dirs, &h)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| net(format!("{}: {e}", parent.display())))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| net(format!("{}: {e}", path.display())))?;
    let count = c.u32()?;
    for _ in 0..count {
        let index = c.u32()? as u64;
        let data = crate::format::decompress_bounded(c.block()?, BLOCK)
            .map_err(|e| net(format!("{}: {e}", path.display())))?;
        f.seek(SeekFrom::Start(index * BLOCK as u64))
            .and_then(|_| f.write_all(&data))
            .map_err(|e| net(format!("{}: {e}", path.display())))?;
    }
    f.set_len(h.size)
        .map_err(|e| net(format!("{}: {e}", path.display())))?;
    Ok(())
}
