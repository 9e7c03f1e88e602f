//! The source side of a live migration: pre-copy rounds while the guest runs, the final
//! stop, and the guest resumed here if anything fails before the destination confirms.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tern_runtime::{DirAccess, Limits, Policy, Preopen};

use crate::SnapshotError;
use crate::format::{Meta, PAGE};
use crate::live::{Captured, Checkpoint, Migratable, RunEnd, Trigger};
use crate::sync::{
    Expected, FileEntry, FileHeader, FileIndex, VolumeOffer, list_files, read_blocks,
};

use super::wire::{
    MAGIC, REPLY_TIMEOUT, json_frame, local, lost, protocol, put_block, read_frame, reason_of,
    write_frame,
};
use super::{
    BLOCKS_PER_FRAME, Gone, Hello, MigrationError, MigrationFailure, PAGES_PER_FRAME, PROTOCOL,
};

/// The destination could not be resolved or reached.
fn connect(reason: String) -> SnapshotError {
    MigrationFailure::Connect { reason }.here()
}

/// Most pre-copy rounds before the final stop.
const MAX_ROUNDS: u32 = 6;

/// A round that sends fewer pages than this is followed by the final stop.
const SMALL_DELTA_PAGES: usize = 64;

/// Why the pre-copy stopped and the guest was stopped for the final round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PrecopyEnd {
    /// The last round changed few pages: the stop carries little.
    #[default]
    Converged,
    /// A round changed about as many pages as the one before (a guest rewriting its
    /// whole working set): more rounds would only resend them, so the stop carries
    /// what changed.
    NotConverging { pages: usize, before: usize },
    /// The most rounds were sent.
    RoundLimit,
}

impl std::fmt::Display for PrecopyEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrecopyEnd::Converged => f.write_str("the pre-copy converged"),
            PrecopyEnd::NotConverging { pages, before } => write!(
                f,
                "the pre-copy did not converge ({pages} pages changed in a round, {before} in the one before), so the guest stopped for the rest"
            ),
            PrecopyEnd::RoundLimit => write!(
                f,
                "the pre-copy reached its {MAX_ROUNDS} rounds, so the guest stopped for the rest"
            ),
        }
    }
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
    /// Why the guest stopped when it did.
    pub precopy: PrecopyEnd,
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
    /// Whether the destination has accepted the guest: an error it sends from then on
    /// is a failure after accepting, not a refusal.
    accepted: bool,
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
            .map_err(|e| connect(format!("cannot resolve {addr}: {e}")))?
            .next()
            .ok_or_else(|| connect(format!("{addr} resolves to nothing")))?;
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(10))
            .map_err(|e| connect(format!("cannot connect to {addr}: {e}")))?;
        if !line.open(&stream) {
            return Err(MigrationFailure::Ended.here());
        }
        stream.set_nodelay(true).map_err(local)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(local)?;
        let replies = BufReader::new(stream.try_clone().map_err(local)?);
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
            accepted: false,
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
        s.stream.write_all(MAGIC).map_err(lost)?;
        s.bytes += MAGIC.len() as u64;
        s.bytes += write_frame(&mut s.stream, b'H', &json_frame(&hello, &module))?;
        s.stream.flush().map_err(lost)?;
        let offers: Vec<VolumeOffer> = serde_json::from_slice(&s.expect(b'A')?)
            .map_err(|e| protocol(format!("bad accept frame: {e}")))?;
        s.accepted = true;
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
            b'E' => {
                let reason = String::from_utf8_lossy(&body).into_owned();
                Err(if self.accepted {
                    MigrationFailure::FailedAfterAccept { reason }
                } else {
                    MigrationFailure::Refused { reason }
                }
                .here())
            }
            other => Err(protocol(format!("unexpected reply {:?}", other as char))),
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
            let read =
                |e: std::io::Error| local(format!("reading volume {}: {e}", v.host.display()));
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
        let meta = serde_json::to_vec(&delta.meta).map_err(local)?;
        self.bytes += write_frame(&mut self.stream, b'Z', &meta)?;
        self.stream.flush().map_err(lost)?;
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
        failure: Option<SnapshotError>,
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
    let outbound = Outbound::new(policy.preopens.clone(), &trigger);
    // The guest is the outbound's before the controller starts, so that a migration
    // asked for at once (`after` of zero) finds it, instead of a guest "not running yet".
    let on_checkpoint = outbound.route(migratable, |_| Checkpoint::Continue);
    // Dropped when the guest ends, so that a migration still waiting to start does not.
    let (ended_tx, ended_rx) = mpsc::channel::<()>();
    let controller = {
        let outbound = outbound.clone();
        let addr = addr.to_owned();
        std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || {
                let r = match ended_rx.recv_timeout(after) {
                    Err(mpsc::RecvTimeoutError::Timeout) => outbound.migrate(&addr, &progress),
                    _ => Err(MigrationFailure::Ended.here().with_peer(&addr)),
                };
                match &r {
                    Err(SnapshotError::Migration(MigrationError {
                        failure: MigrationFailure::Ended,
                        ..
                    })) => {
                        progress("migration: the guest finished here before it could be migrated");
                    }
                    Err(_) if outbound.guest_has_ended() => {
                        progress("migration: the guest finished here before it could be migrated");
                    }
                    Err(e) => progress(&format!("{e}; the guest keeps running here")),
                    Ok(_) => {}
                }
                r
            })
            .map_err(|e| local(format!("cannot start the migration thread: {e}")))?
    };
    let end = migratable.run(policy, limits, &trigger, on_checkpoint)?;
    drop(ended_tx);
    if matches!(end, RunEnd::Finished(_)) {
        outbound.guest_ended();
    }
    let result = controller
        .join()
        .unwrap_or_else(|_| Err(local("migration thread panicked")));
    Ok(match (end, result) {
        (RunEnd::Stopped, Ok(stats)) => MigrateEnd::Migrated(stats),
        (RunEnd::Stopped, Err(e)) => {
            // Cannot happen: the controller only says Stop after a confirmation.
            return Err(e);
        }
        (RunEnd::Finished(outcome), result) => MigrateEnd::Finished {
            outcome,
            failure: result.err(),
        },
    })
}

/// Live migrations of a running guest, started on demand (`tern run --migrate-to`
/// starts one after a delay; a node agent starts one when asked to move an app), with
/// the guest's other checkpoints going on meanwhile.
///
/// The guest is run with [`Outbound::route`] as its checkpoint handler: a capture taken
/// while a migration is under way goes to that migration, any other to the handler
/// given. [`Outbound::migrate`] connects, pre-copies and stops the guest for the final
/// round; if anything fails before the destination confirms, the guest carries on here.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<OutboundInner>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound").finish_non_exhaustive()
    }
}

struct OutboundInner {
    volumes: Vec<Preopen>,
    trigger: Trigger,
    /// The guest, once it runs.
    guest: Mutex<Option<Migratable>>,
    /// The migration under way: where the guest's captures go, and where the verdict on
    /// each comes from.
    route: Mutex<Option<Route>>,
    generation: std::sync::atomic::AtomicU64,
    busy: std::sync::atomic::AtomicBool,
    ended: std::sync::atomic::AtomicBool,
    line: Mutex<Line>,
}

struct Route {
    generation: u64,
    deltas: mpsc::Sender<Delta>,
    verdicts: mpsc::Receiver<Checkpoint>,
}

impl Outbound {
    /// Migrations of a guest that preopens `volumes` and stops at `trigger`.
    pub fn new(volumes: Vec<Preopen>, trigger: &Trigger) -> Outbound {
        Outbound {
            inner: Arc::new(OutboundInner {
                volumes,
                trigger: trigger.clone(),
                guest: Mutex::new(None),
                route: Mutex::new(None),
                generation: std::sync::atomic::AtomicU64::new(0),
                busy: std::sync::atomic::AtomicBool::new(false),
                ended: std::sync::atomic::AtomicBool::new(false),
                line: Mutex::new(Line::default()),
            }),
        }
    }

    /// The checkpoint handler to run `guest` with: captures go to the migration under
    /// way, or to `on_checkpoint` when there is none.
    pub fn route<F: FnMut(Captured<'_>) -> Checkpoint>(
        &self,
        guest: &Migratable,
        mut on_checkpoint: F,
    ) -> impl FnMut(Captured<'_>) -> Checkpoint + use<F> {
        *lock(&self.inner.guest) = Some(guest.clone());
        let inner = self.inner.clone();
        let mut sent = HashMap::new();
        let mut generation = 0;
        move |captured| {
            let route = lock(&inner.route);
            match &*route {
                Some(r) => {
                    if r.generation != generation {
                        // A new migration: nothing of this one was sent yet.
                        sent.clear();
                        generation = r.generation;
                    }
                    let delta = page_delta(&mut sent, captured);
                    if r.deltas.send(delta).is_err() {
                        return Checkpoint::Continue;
                    }
                    // The migration's end drops the sender: the guest carries on.
                    r.verdicts.recv().unwrap_or(Checkpoint::Continue)
                }
                None => {
                    drop(route);
                    on_checkpoint(captured)
                }
            }
        }
    }

    /// Live-migrates the guest to `addr` now. Returns once the destination has
    /// confirmed (the guest stops here: its run ends with [`RunEnd::Stopped`]) or the
    /// migration has failed (the guest carries on here). `progress` receives one line
    /// per round.
    ///
    /// # Errors
    /// Why the migration failed: the guest was not running yet or has ended, another
    /// migration is under way, or what [`MigrationFailure`] names.
    pub fn migrate(
        &self,
        addr: &str,
        progress: &dyn Fn(&str),
    ) -> Result<MigrationStats, SnapshotError> {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        if inner.busy.swap(true, Ordering::SeqCst) {
            return Err(local("a migration of this guest is under way already"));
        }
        let result = (|| {
            let Some(guest) = lock(&inner.guest).clone() else {
                return Err(local("the guest is not running yet"));
            };
            let (delta_tx, deltas) = mpsc::channel();
            let (verdict, verdicts) = mpsc::channel();
            let line = Line::default();
            *lock(&inner.line) = line.clone();
            *lock(&inner.route) = Some(Route {
                generation: inner.generation.fetch_add(1, Ordering::SeqCst) + 1,
                deltas: delta_tx,
                verdicts,
            });
            if inner.ended.load(Ordering::SeqCst) {
                lock(&inner.route).take();
                return Err(MigrationFailure::Ended.here());
            }
            let r = control(
                &guest,
                addr,
                inner.volumes.clone(),
                &inner.trigger,
                &deltas,
                &verdict,
                progress,
                &line,
            );
            // A guest waiting for a verdict carries on (or has stopped, if it moved).
            drop(verdict);
            lock(&inner.route).take();
            r
        })()
        .map_err(|e| e.with_peer(addr));
        inner.busy.store(false, Ordering::SeqCst);
        result
    }

    /// The guest has ended here: a migration under way gives up at once.
    pub fn guest_ended(&self) {
        self.inner
            .ended
            .store(true, std::sync::atomic::Ordering::SeqCst);
        lock(&self.inner.route).take();
        lock(&self.inner.line).hang_up();
    }

    /// Whether [`Outbound::guest_ended`] was called.
    pub fn guest_has_ended(&self) -> bool {
        self.inner.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
}

#[allow(clippy::too_many_arguments)]
fn control(
    migratable: &Migratable,
    addr: &str,
    volumes: Vec<Preopen>,
    trigger: &Trigger,
    snapshots: &mpsc::Receiver<Delta>,
    verdict: &mpsc::Sender<Checkpoint>,
    progress: &dyn Fn(&str),
    line: &Line,
) -> Result<MigrationStats, SnapshotError> {
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
    let mut before: Option<usize> = None;
    loop {
        rounds += 1;
        trigger.fire();
        let Ok(snapshot) = snapshots.recv() else {
            return Err(MigrationFailure::Ended.here());
        };
        refuse_stdin_readers(&snapshot.meta, addr)?;
        let last = rounds >= MAX_ROUNDS;
        if !last {
            // Pre-copy: let the guest run on while this round goes out.
            let _ = verdict.send(Checkpoint::Continue);
            let changed = source.send_pages(&snapshot).and_then(|n| {
                source.send_files(&snapshot.touched)?;
                source.bytes += write_frame(&mut source.stream, b'K', &[])?;
                source.stream.flush().map_err(lost)?;
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
            // A round that resends about as much as the one before will not be
            // followed by a smaller one: the guest rewrites its working set faster
            // than it goes out. Stop now rather than resend it round after round.
            let stop = match before {
                _ if rounds == 1 => None,
                _ if changed <= SMALL_DELTA_PAGES => Some(PrecopyEnd::Converged),
                Some(b) if changed * 10 >= b * 9 => Some(PrecopyEnd::NotConverging {
                    pages: changed,
                    before: b,
                }),
                _ => None,
            };
            before = Some(changed);
            let Some(why) = stop else { continue };
            // Stop for good in the next round.
            rounds += 1;
            trigger.fire();
            let Ok(snapshot) = snapshots.recv() else {
                return Err(MigrationFailure::Ended.here());
            };
            refuse_stdin_readers(&snapshot.meta, addr)?;
            return finish(source, &snapshot, verdict, rounds, started, why);
        }
        return finish(
            source,
            &snapshot,
            verdict,
            rounds,
            started,
            PrecopyEnd::RoundLimit,
        );
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
        n => Err(local(format!(
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
    precopy: PrecopyEnd,
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
                precopy,
            })
        }
        Err(e) => {
            let _ = verdict.send(Checkpoint::Continue);
            Err(e)
        }
    }
}
