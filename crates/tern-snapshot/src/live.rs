//! Running a migratable guest, stopping it at a safe point, capturing its state, and
//! restoring it from a [`Snapshot`].
//!
//! Beside it: `live/imports.rs`, the host side of the rewrite's `tern.*` imports (safe
//! points, sleeps, the notes that keep the table of open and changed files);
//! `live/reopen.rs`, loading a snapshot's globals and reopening its files;
//! `live/trigger.rs`, [`Trigger`]. Here: the clock that keeps monotonic time running
//! forward across a restore, capture, and the restore itself.
//!
//! The unwind records live in the memory the rewrite adds for them
//! ([`tern_passes::unwind::UNWIND_MEMORY`]), which the guest's code never addresses; a
//! snapshot carries the records themselves. The host never adds pages to the guest's own
//! memory: its allocator may take them (wasi-libc's malloc of 2022 takes everything up to
//! `memory.size` at its first call).
//!
//! The WASI calls the host makes for a stopped guest (reading file offsets at a capture,
//! reopening files at a restore) need buffers in the guest's memory: the host lends
//! itself its top [`SCRATCH`] bytes and puts the guest's bytes back before it runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tern_runtime::{
    DirAccess, Engine, Host, Limits, Outcome, Policy, Preopen, Program, RemoteFlag, Session,
    StdioTap,
};
use wasmtime::{Caller, Memory, TypedFunc, Val};

use crate::format::{GlobalValue, Meta, OpenFile, PAGE, Snapshot, Volume, WRITE_RIGHTS, WasiState};
use crate::volumes::FileRecord;
use crate::{Rewriter, SnapshotError};
use tern_passes::PassError;
use tern_passes::instrument::{GLOBAL_EXPORT_PREFIX, POLL_FLAG_ADDR, SAFEPOINT, SLEEP};
use tern_passes::unwind::UNWIND_MEMORY_PAGES;

mod captured;
mod clock;

mod imports;
mod reopen;
mod trigger;

pub use captured::Captured;
use clock::Clock;
use imports::add_host_imports;
use reopen::load_state;
pub use trigger::Trigger;

/// Bytes at the top of the guest's memory the host lends itself while the guest is
/// stopped, for the WASI calls it makes on its behalf.
const SCRATCH: u32 = 8192;
/// Where the unwind records start in the unwind memory, after `[current, end]`.
const UNWIND_HEADER: usize = 8;

const ASYNCIFY_REWINDING: i32 = 2;
/// WASI oflags a reopen must drop: the file exists now, and must not be emptied again.
const OFLAGS_CREAT_EXCL_TRUNC: u32 = 0x1 | 0x4 | 0x8;

/// Where and how a restored guest runs: host directories for its volumes (by guest
/// path), whether it gets this process's stdio, and its limits.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub dirs: &'a [Preopen],
    pub inherit_stdio: bool,
    /// With `inherit_stdio`: whether this process's stdin is the same input the guest
    /// was reading, so that the bytes it had consumed ([`WasiState::stdin_consumed`])
    /// are skipped before it reads again; otherwise it reads this stdin from its start.
    pub skip_stdin: bool,
    pub limits: &'a Limits,
}

/// An instance made ready for a restore whose memory is still arriving; see
/// [`Migratable::prepare`].
pub struct Prepared {
    session: Session,
    memory: Memory,
    /// Pages the module's memory starts with.
    initial: u32,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("initial", &self.initial)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// Grows memory to `pages` 64 KiB pages (memory never shrinks).
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] when `pages` is fewer than memory has already, and
    /// [`SnapshotError::Foreign`] when the limits refuse the growth.
    pub fn resize(&mut self, pages: u32) -> Result<(), SnapshotError> {
        let have = (self.memory.data_size(&self.session.store) / PAGE) as u64;
        let want = u64::from(pages);
        if want < u64::from(self.initial) {
            return Err(SnapshotError::Foreign {
                reason: format!(
                    "its memory has {want} pages, fewer than the module starts with ({})",
                    self.initial
                ),
            });
        }
        if want < have {
            return Err(SnapshotError::Corrupt {
                reason: format!("memory shrinks from {have} to {want} pages"),
            });
        }
        if want > have {
            self.memory
                .grow(&mut self.session.store, want - have)
                .map_err(|e| SnapshotError::Foreign {
                    reason: format!("cannot grow memory to {want} pages: {e:#}"),
                })?;
        }
        Ok(())
    }

    /// The 64 KiB page `index` of memory, to write.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] when the page lies outside memory.
    pub fn page_mut(&mut self, index: u32) -> Result<&mut [u8], SnapshotError> {
        let at = index as usize * PAGE;
        self.memory
            .data_mut(&mut self.session.store)
            .get_mut(at..at + PAGE)
            .ok_or_else(|| SnapshotError::Corrupt {
                reason: format!("page {index} lies outside memory"),
            })
    }
}

/// How [`Migratable::run`] ended.
#[derive(Debug)]
pub enum RunEnd {
    /// The guest ran to its end.
    Finished(Outcome),
    /// The guest stopped at a checkpoint (its state went to the `on_checkpoint` callback).
    Stopped,
}

/// What to do after a checkpoint was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// Stop the guest: [`Migratable::run`] returns the snapshot.
    Stop,
    /// Let the guest continue where it stopped.
    Continue,
}

#[derive(Clone)]
struct Asyncify {
    get_state: TypedFunc<(), i32>,
    start_unwind: TypedFunc<i32, ()>,
    stop_unwind: TypedFunc<(), ()>,
    start_rewind: TypedFunc<i32, ()>,
    stop_rewind: TypedFunc<(), ()>,
}

/// The host's state beside the guest's, kept in the store.
struct Ext {
    trigger: Trigger,
    asyncify: Option<Asyncify>,
    memory: Option<Memory>,
    /// The rewrite's memory for unwind records.
    unwind: Option<Memory>,
    unwinding: bool,
    /// Preopened volumes by descriptor.
    volumes: BTreeMap<u32, Volume>,
    /// Files the guest has open, as `tern.note_*` told the host (offsets are read at a
    /// checkpoint).
    files: BTreeMap<u32, OpenFile>,
    /// Host directory of each volume, by guest path.
    hosts: Vec<(String, PathBuf)>,
    /// Files the guest has changed (opened for writing, created, renamed, removed) or
    /// opened in a read-only volume, by volume and path, bounded by [`MAX_CHANGED`].
    changed: BTreeSet<(String, String)>,
}

/// The host directory of each of `policy`'s volumes, by guest path.
fn volume_hosts(policy: &Policy) -> Vec<(String, PathBuf)> {
    policy
        .preopens
        .iter()
        .map(|p| (p.guest.clone(), p.host.clone()))
        .collect()
}

/// Most changed files remembered; a guest that touches more is not fully recorded,
/// and says so once.
const MAX_CHANGED: usize = 100_000;

/// WASI oflags that change a file by opening it: create, truncate.
const OFLAGS_CREAT_TRUNC: u32 = 0x1 | 0x8;

impl Ext {
    /// The volume and path inside it of `name` opened under descriptor `dir`.
    fn locate(&self, dir: u32, name: String) -> Option<(String, String)> {
        if let Some(v) = self.volumes.get(&dir) {
            Some((v.guest.clone(), name))
        } else {
            self.files
                .get(&dir)
                .map(|parent| (parent.volume.clone(), format!("{}/{}", parent.path, name)))
        }
    }

    fn note_changed(&mut self, file: (String, String)) {
        if self.changed.len() < MAX_CHANGED {
            self.changed.insert(file);
        } else if !self.changed.contains(&file) {
            tracing::warn!(
                "the guest has changed more than {MAX_CHANGED} files; later ones are not recorded in checkpoints"
            );
        }
    }
}

/// A module made migratable, compiled and linked, ready to run or restore many times.
#[derive(Debug, Clone)]
pub struct Migratable {
    program: Program,
    original: Arc<Vec<u8>>,
    digest: String,
    /// SHA-256 of the rewritten module: a snapshot's unwind data only means something
    /// to the same rewrite.
    rewrite_digest: String,
}

impl Migratable {
    /// Makes `wasm` (the original binary module) migratable and compiles it.
    ///
    /// # Errors
    /// [`SnapshotError::Rewrite`] when it cannot be made migratable; [`SnapshotError::Runtime`] when it does not compile or link.
    pub fn new(
        engine: &Engine,
        rewriter: &Rewriter,
        wasm: &[u8],
    ) -> Result<Migratable, SnapshotError> {
        let rewritten = rewriter.rewrite(wasm)?;
        let compile_err = |e: &dyn std::fmt::Display| {
            SnapshotError::Rewrite(PassError::Defect {
                reason: format!("the rewritten module does not compile: {e:#}"),
            })
        };
        let module = match rewriter.artifacts() {
            Some(cache) => {
                let digest = tern_runtime::digest(&rewritten);
                cache
                    .load_or_compile(engine, &rewritten, &digest, Path::new("<migratable>"))
                    .map_err(|e| compile_err(&e))?
                    .0
            }
            None => {
                wasmtime::Module::new(engine.wasmtime(), &rewritten).map_err(|e| compile_err(&e))?
            }
        };
        let program = Program::with_imports(engine, module, add_host_imports)?;
        Ok(Migratable {
            program,
            original: Arc::new(wasm.to_vec()),
            digest: hex::encode(Sha256::digest(wasm)),
            rewrite_digest: hex::encode(Sha256::digest(&rewritten)),
        })
    }

    /// The original module.
    pub fn original(&self) -> &[u8] {
        &self.original
    }

    /// SHA-256 of the original module, hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs the guest from its start. Each time `trigger` fires, the guest stops at its
    /// next safe point, its state is captured and handed to `on_checkpoint`, which says
    /// whether to stop there or continue.
    ///
    /// # Errors
    /// Set-up failures and a checkpoint that cannot be captured. What the guest does is
    /// a [`RunEnd::Finished`] outcome.
    pub fn run(
        &self,
        policy: &Policy,
        limits: &Limits,
        trigger: &Trigger,
        on_checkpoint: impl FnMut(Captured<'_>) -> Checkpoint,
    ) -> Result<RunEnd, SnapshotError> {
        let volumes = policy
            .preopens
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let fd = 3 + i as u32;
                let volume = Volume {
                    guest: p.guest.clone(),
                    fd,
                    read_only: p.access == DirAccess::ReadOnly,
                };
                (fd, volume)
            })
            .collect();
        let clock = Clock::new(0);
        let mut session = match self.start(policy, &clock, limits, trigger, volumes)? {
            Ok(s) => s,
            Err(outcome) => return Ok(RunEnd::Finished(outcome)),
        };
        self.drive(&mut session, limits, trigger, &clock, policy, on_checkpoint)
    }

    /// Rebuilds the guest of `snapshot` and runs it on from where it stopped. `dirs`
    /// maps each of the snapshot's volumes (by guest path) to a host directory.
    /// `on_restored` is called once the whole state is in place, before the guest runs;
    /// an error from it ends the restore.
    ///
    /// # Errors
    /// [`SnapshotError::Foreign`] when the snapshot was taken of another module,
    /// [`SnapshotError::UnmappedVolume`] when a volume has no directory,
    /// [`SnapshotError::Reopen`] when an open file cannot be opened again. Nothing of the
    /// guest runs unless all of its state was restored.
    pub fn restore(
        &self,
        snapshot: &Snapshot,
        place: &Placement<'_>,
        trigger: &Trigger,
        on_restored: impl FnOnce() -> Result<(), SnapshotError>,
        on_checkpoint: impl FnMut(Captured<'_>) -> Checkpoint,
    ) -> Result<RunEnd, SnapshotError> {
        let mut prepared = match self.prepare(place.limits, trigger)? {
            Ok(p) => p,
            Err(outcome) => return Ok(RunEnd::Finished(outcome)),
        };
        prepared.resize(snapshot.meta.memory_pages)?;
        for (index, page) in &snapshot.pages {
            prepared.page_mut(*index)?.copy_from_slice(page);
        }
        self.resume(
            prepared,
            &snapshot.meta,
            place,
            trigger,
            on_restored,
            on_checkpoint,
        )
    }

    /// Instantiates the module for a restore whose state is still to come, as a live
    /// migration's destination does while the source pre-copies: memory then arrives
    /// page by page through [`Prepared::page_mut`], and [`Migratable::resume`] finishes
    /// the restore. The module's initial memory is cleared: a snapshot lists every
    /// page that is not zero.
    ///
    /// # Errors
    /// As [`Migratable::restore`]; `Ok(Err(outcome))` when instantiation itself ended
    /// the guest (a limit, say).
    pub fn prepare(
        &self,
        limits: &Limits,
        trigger: &Trigger,
    ) -> Result<Result<Prepared, Outcome>, SnapshotError> {
        let mut session = match self.start(
            &Policy::default(),
            &Clock::new(0),
            limits,
            trigger,
            BTreeMap::new(),
        )? {
            Ok(s) => s,
            Err(outcome) => return Ok(Err(outcome)),
        };
        let memory = ext(&mut session.store)
            .memory
            .ok_or_else(|| SnapshotError::Foreign {
                reason: "the module has no memory".into(),
            })?;
        // Pages grown later are zero already; only the module's initial pages (its data
        // segments) need clearing, and touching the rest would only cost page faults.
        let initial = memory.data_size(&session.store) / PAGE;
        memory.data_mut(&mut session.store).fill(0);
        Ok(Ok(Prepared {
            session,
            memory,
            initial: initial as u32,
        }))
    }

    /// Finishes a restore begun by [`Migratable::prepare`] whose memory now holds the
    /// snapshot's pages: sets globals, the WASI context of `meta` (arguments,
    /// environment, volumes mapped by `place`, clock) and its open files, then rewinds
    /// the guest and runs it on. `on_restored` is called once the whole state is in
    /// place, before the guest runs; an error from it ends the restore.
    ///
    /// # Errors
    /// As [`Migratable::restore`].
    pub fn resume(
        &self,
        mut prepared: Prepared,
        meta: &Meta,
        place: &Placement<'_>,
        trigger: &Trigger,
        on_restored: impl FnOnce() -> Result<(), SnapshotError>,
        on_checkpoint: impl FnMut(Captured<'_>) -> Checkpoint,
    ) -> Result<RunEnd, SnapshotError> {
        let Placement {
            dirs,
            inherit_stdio,
            skip_stdin,
            limits,
        } = *place;
        if meta.module_digest != self.digest {
            return Err(SnapshotError::Foreign {
                reason: format!(
                    "it was taken of module {}, not {}",
                    short(&meta.module_digest),
                    short(&self.digest)
                ),
            });
        }
        if meta.rewrite_digest != self.rewrite_digest {
            return Err(SnapshotError::Foreign {
                reason: format!(
                    "it was taken by {} whose migratable rewrite of the module ({}) differs \
                     from this Tern's ({}: another Tern version); its saved \
                     stack only resumes under the same rewrite, so restore it with the \
                     Tern that wrote it",
                    meta.writer,
                    short(&meta.rewrite_digest),
                    short(&self.rewrite_digest)
                ),
            });
        }
        let mut preopens = Vec::new();
        for v in &meta.wasi.volumes {
            let dir = dirs.iter().find(|d| d.guest == v.guest).ok_or_else(|| {
                SnapshotError::UnmappedVolume {
                    guest: v.guest.clone(),
                }
            })?;
            let access = if v.read_only {
                DirAccess::ReadOnly
            } else {
                dir.access
            };
            preopens.push(Preopen {
                host: dir.host.clone(),
                guest: v.guest.clone(),
                access,
            });
        }
        let policy = Policy {
            args: meta.wasi.args.clone(),
            env: meta.wasi.env.clone(),
            preopens,
            inherit_stdio,
        };
        let clock = Clock::new(meta.wasi.monotonic_ns);
        // The final size: fewer pages than received is a shrink, and refused.
        prepared.resize(meta.memory_pages)?;
        let Prepared {
            mut session,
            memory,
            ..
        } = prepared;
        // No guest code has run yet: the context the instance was made with is replaced
        // whole by the snapshot's. Stdin goes on counting from what the guest had read,
        // and skips as much of this process's stdin when the same input is given again.
        let consumed = meta.wasi.stdin_consumed;
        let stdio = StdioTap::resuming(consumed, if skip_stdin { consumed } else { 0 });
        let wasi = policy
            .wasi_builder(&stdio)?
            .monotonic_clock(clock.clone())
            .build_p1();
        session.store.data_mut().replace_context(wasi, stdio);
        ext(&mut session.store).hosts = volume_hosts(&policy);
        ext(&mut session.store).volumes = meta
            .wasi
            .volumes
            .iter()
            .map(|v| (v.fd, v.clone()))
            .collect();
        load_state(&mut session, memory, meta)?;
        // Everything is in place: the caller may confirm (a migration's source stops its
        // copy now) or back out before any guest code runs.
        on_restored()?;
        let asyncify = ext(&mut session.store).asyncify.clone();
        if let Some(a) = asyncify {
            a.start_rewind
                .call(&mut session.store, 0)
                .map_err(|e| capture_err(format!("cannot start the rewind: {e:#}")))?;
        }
        self.drive(
            &mut session,
            limits,
            trigger,
            &clock,
            &policy,
            on_checkpoint,
        )
    }

    fn start(
        &self,
        policy: &Policy,
        clock: &Clock,
        limits: &Limits,
        trigger: &Trigger,
        volumes: BTreeMap<u32, Volume>,
    ) -> Result<Result<Session, Outcome>, SnapshotError> {
        let stdio = StdioTap::new();
        let wasi = policy
            .wasi_builder(&stdio)?
            .monotonic_clock(clock.clone())
            .build_p1();
        let state = Ext {
            trigger: trigger.clone(),
            asyncify: None,
            memory: None,
            unwind: None,
            unwinding: false,
            volumes,
            files: BTreeMap::new(),
            hosts: volume_hosts(policy),
            changed: BTreeSet::new(),
        };
        let mut session =
            match self
                .program
                .instantiate(wasi, stdio, limits, Some(Box::new(state)))?
            {
                Ok(s) => s,
                Err(outcome) => return Ok(Err(outcome)),
            };
        let asyncify = Asyncify {
            get_state: asyncify_export(&mut session, "asyncify_get_state")?,
            start_unwind: asyncify_export(&mut session, "asyncify_start_unwind")?,
            stop_unwind: asyncify_export(&mut session, "asyncify_stop_unwind")?,
            start_rewind: asyncify_export(&mut session, "asyncify_start_rewind")?,
            stop_rewind: asyncify_export(&mut session, "asyncify_stop_rewind")?,
        };
        let memory = session.instance.get_memory(&mut session.store, "memory");
        let unwind = session
            .instance
            .get_memory(&mut session.store, tern_passes::unwind::UNWIND_MEMORY)
            .ok_or_else(|| capture_err("the rewritten module has no unwind memory".into()))?;
        {
            let e = ext(&mut session.store);
            e.asyncify = Some(asyncify);
            e.memory = memory;
            e.unwind = Some(unwind);
        }
        let flag = session.remote_flag(POLL_FLAG_ADDR)?;
        trigger.arm(Some(flag));
        Ok(Ok(session))
    }

    /// Calls `_start` (which rewinds first after a restore) until the guest ends or a
    /// checkpoint stops it.
    fn drive(
        &self,
        session: &mut Session,
        limits: &Limits,
        trigger: &Trigger,
        clock: &Clock,
        policy: &Policy,
        mut on_checkpoint: impl FnMut(Captured<'_>) -> Checkpoint,
    ) -> Result<RunEnd, SnapshotError> {
        let wasi_state = WasiState {
            args: policy.args.clone(),
            env: policy.env.clone(),
            ..WasiState::default()
        };
        let start = session
            .instance
            .get_typed_func::<(), ()>(&mut session.store, "_start")
            .map_err(|e| capture_err(format!("no _start: {e:#}")))?;
        let end = loop {
            let result = start.call(&mut session.store, ());
            let e = ext(&mut session.store);
            if !(result.is_ok() && e.unwinding) {
                break Ok(RunEnd::Finished(self.program.outcome(result, limits)));
            }
            e.unwinding = false;
            let Some(a) = e.asyncify.clone() else {
                break Err(capture_err("asyncify exports are gone".into()));
            };
            a.stop_unwind
                .call(&mut session.store, ())
                .map_err(|e| capture_err(format!("cannot stop the unwind: {e:#}")))?;
            let (meta, memory) = self.capture(session, clock, wasi_state.clone())?;
            tracing::info!(pages = meta.memory_pages, "checkpoint captured");
            let (hosts, touched) = {
                let e = ext(&mut session.store);
                let mut touched = e.changed.clone();
                touched.extend(e.files.values().map(|f| (f.volume.clone(), f.path.clone())));
                (e.hosts.clone(), touched.into_iter().collect())
            };
            let verdict = on_checkpoint(Captured {
                meta,
                memory: memory.data(&session.store),
                module: &self.original,
                hosts,
                touched,
            });
            match verdict {
                Checkpoint::Stop => break Ok(RunEnd::Stopped),
                Checkpoint::Continue => {
                    a.start_rewind
                        .call(&mut session.store, 0)
                        .map_err(|e| capture_err(format!("cannot rewind: {e:#}")))?;
                }
            }
        };
        trigger.arm(None);
        end
    }

    fn capture(
        &self,
        session: &mut Session,
        clock: &Clock,
        mut wasi: WasiState,
    ) -> Result<(Meta, Memory), SnapshotError> {
        let (memory, unwind_memory, files, volumes) = {
            let e = ext(&mut session.store);
            (
                e.memory,
                e.unwind,
                e.files.clone(),
                e.volumes.values().cloned().collect::<Vec<_>>(),
            )
        };
        let memory = memory.ok_or_else(|| capture_err("the guest has no memory".into()))?;
        let unwind_memory = unwind_memory.ok_or_else(|| capture_err("no unwind memory".into()))?;
        let unwind = unwind_records(&unwind_memory, &session.store)?;
        if !files.is_empty() {
            let seek = session
                .instance
                .get_typed_func::<(i32, i64, i32, i32), i32>(&mut session.store, "tern:fd_seek")
                .map_err(|e| capture_err(format!("{e:#}")))?;
            with_scratch(session, memory, |session, scratch| {
                for (fd, mut f) in files {
                    // Directories have no offset: fd_seek fails on them and 0 is right.
                    let errno = seek
                        .call(&mut session.store, (fd as i32, 0, 1, scratch as i32))
                        .map_err(|e| capture_err(format!("fd_seek: {e:#}")))?;
                    let offset = if errno == 0 {
                        let data = memory.data(&session.store);
                        let at = scratch as usize;
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&data[at..at + 8]);
                        u64::from_le_bytes(b)
                    } else {
                        0
                    };
                    f.offset = offset;
                    wasi.files.push(f);
                }
                Ok(())
            })?;
        }
        wasi.volumes = volumes;
        wasi.monotonic_ns = wasmtime_wasi::HostMonotonicClock::now(clock);
        wasi.stdin_consumed = session.store.data().stdio().stdin_consumed();

        let mut globals = Vec::new();
        let names: Vec<(u32, wasmtime::Global)> = session
            .instance
            .exports(&mut session.store)
            .filter_map(|e| {
                let index = e.name().strip_prefix(GLOBAL_EXPORT_PREFIX)?.parse().ok()?;
                Some((index, e.into_global()?))
            })
            .collect();
        for (index, g) in names {
            let value = match g.get(&mut session.store) {
                Val::I32(v) => GlobalValue::I32(v as u32),
                Val::I64(v) => GlobalValue::I64(v as u64),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                other => {
                    return Err(capture_err(format!(
                        "global {index} holds a reference ({:?}), which cannot be saved",
                        other.ty(&session.store)
                    )));
                }
            };
            globals.push((index, value));
        }
        globals.sort_by_key(|(i, _)| *i);

        let meta = Meta {
            module_digest: self.digest.clone(),
            rewrite_digest: self.rewrite_digest.clone(),
            memory_pages: (memory.data_size(&session.store) / PAGE) as u32,
            globals,
            unwind,
            wasi,
            writer: format!("tern {}", env!("CARGO_PKG_VERSION")),
        };
        Ok((meta, memory))
    }
}

/// The records an unwind left in the unwind memory, after its header.
fn unwind_records(
    unwind: &Memory,
    store: &wasmtime::Store<Host>,
) -> Result<Vec<u8>, SnapshotError> {
    let data = unwind.data(store);
    let current = data
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| capture_err("the unwind memory is empty".into()))?;
    data.get(UNWIND_HEADER..current)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            capture_err(format!(
                "the unwind left its records at {current}, outside its memory"
            ))
        })
}

/// Gives the unwind memory its [`UNWIND_MEMORY_PAGES`] pages, once; the guest's memory
/// limit counts them.
fn grow_unwind(unwind: &Memory, store: &mut impl wasmtime::AsContextMut) -> Result<(), String> {
    let have = unwind.data_size(&*store) / PAGE;
    let want = UNWIND_MEMORY_PAGES as usize;
    if have < want {
        unwind
            .grow(store, (want - have) as u64)
            .map_err(|e| format!("no room for {want} pages of unwind records: {e:#}"))?;
    }
    Ok(())
}

/// Writes the header of an unwind into the unwind memory: records from
/// [`UNWIND_HEADER`], `records` bytes of them there already (0 for a fresh unwind).
fn unwind_header(
    unwind: &Memory,
    store: &mut impl wasmtime::AsContextMut,
    records: usize,
) -> Result<(), SnapshotError> {
    let end = unwind.data_size(&*store);
    let current = UNWIND_HEADER + records;
    if current > end {
        return Err(SnapshotError::Corrupt {
            reason: format!("its unwind records ({records} bytes) do not fit the unwind memory"),
        });
    }
    let mut header = [0u8; UNWIND_HEADER];
    header[..4].copy_from_slice(&(current as u32).to_le_bytes());
    header[4..].copy_from_slice(&(end as u32).to_le_bytes());
    unwind
        .write(store, 0, &header)
        .map_err(|e| capture_err(format!("{e}")))
}

/// Runs `f` with the top [`SCRATCH`] bytes of the stopped guest's memory lent to the
/// host (their address is `f`'s second argument), and puts the guest's bytes back,
/// whatever `f` returns.
fn with_scratch<T>(
    session: &mut Session,
    memory: Memory,
    f: impl FnOnce(&mut Session, u32) -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    let size = memory.data_size(&session.store);
    let at = size
        .checked_sub(SCRATCH as usize)
        .ok_or_else(|| capture_err(format!("the guest's memory ({size} bytes) is too small")))?;
    let saved = memory.data(&session.store)[at..].to_vec();
    let r = f(session, at as u32);
    memory.data_mut(&mut session.store)[at..at + saved.len()].copy_from_slice(&saved);
    r
}

fn asyncify_export<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    session: &mut Session,
    name: &str,
) -> Result<TypedFunc<P, R>, SnapshotError> {
    session
        .instance
        .get_typed_func(&mut session.store, name)
        .map_err(|e| {
            SnapshotError::Rewrite(PassError::Defect {
                reason: format!("the rewritten module lacks the unwind export {name}: {e:#}"),
            })
        })
}

fn short(digest: &str) -> &str {
    match digest.get(..12) {
        Some(s) => s,
        None if digest.is_empty() => "unrecorded",
        None => digest,
    }
}

fn capture_err(reason: String) -> SnapshotError {
    SnapshotError::Capture { reason }
}

fn ext(store: &mut wasmtime::Store<Host>) -> &mut Ext {
    store
        .data_mut()
        .extension::<Ext>()
        .expect("every migratable store is built with an Ext in Migratable::start")
}

fn caller_ext<'a>(caller: &'a mut Caller<'_, Host>) -> &'a mut Ext {
    caller
        .data_mut()
        .extension::<Ext>()
        .expect("every migratable store is built with an Ext in Migratable::start")
}
