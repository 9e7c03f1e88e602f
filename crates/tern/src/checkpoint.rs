//! Checkpointing from the command line: the `--checkpoint-*` flags shared by `tern run`
//! and `tern restore`, and running a guest in migratable mode.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{Engine, Limits, Policy};
use tern_snapshot::{
    Captured, Checkpoint, Migratable, MigrateEnd, Rewriter, RunEnd, Snapshot, Trigger, migrate_run,
};

use crate::common::{on_guest_thread, positive_duration, report};

/// Whether any snapshot was written: none yet, one at least, or only failures.
const NONE_WRITTEN: u8 = 0;
const WRITTEN: u8 = 1;
const FAILED: u8 = 2;

/// Flags that switch on migratable mode. A run without them is not rewritten and pays
/// nothing for checkpoints.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Stop the guest at its first safe point after DURATION (e.g. 2s, 500ms), write
    /// its snapshot to --checkpoint-out and exit 0. Resume it with `tern restore`.
    /// (With --checkpoint-out alone, SIGUSR1 does the same, at any time.)
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, requires = "checkpoint_out")]
    pub checkpoint_after: Option<Duration>,

    /// Stop at the N-th safe point the guest reaches (loop headers and WASI calls) and
    /// write its snapshot: a checkpoint that does not depend on timing, for tests and
    /// debugging (the guest runs slower until then).
    #[arg(long, value_name = "N", requires = "checkpoint_out", conflicts_with = "checkpoint_after",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_at_safepoint: Option<u64>,

    /// Where the snapshot goes. A checkpoint is taken after --checkpoint-after, at
    /// --checkpoint-at-safepoint, and whenever the process receives SIGUSR1. SIGTERM
    /// and SIGINT (Ctrl-C) take one at the next safe point and then stop with status
    /// 143 or 130, so stopping a long run never loses it; a second SIGTERM or SIGINT
    /// stops at once, without one.
    #[arg(long, value_name = "FILE")]
    pub checkpoint_out: Option<PathBuf>,

    /// Write the snapshot and let the guest carry on (a checkpoint, not a stop); each
    /// later checkpoint (SIGUSR1) replaces the file.
    #[arg(long, requires = "checkpoint_out")]
    pub keep_running: bool,

    /// Live-migrate the running guest to a `tern receive --listen ADDR` (HOST:PORT):
    /// memory and volume files are copied while it runs, then it stops at a safe point,
    /// the last changes go over and it resumes there. If the destination fails at any
    /// point the guest carries on here as if nothing happened.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["checkpoint_out"])]
    pub migrate_to: Option<String>,

    /// When to start migrating [default: at once].
    #[arg(long, value_name = "DURATION", value_parser = positive_duration, requires = "migrate_to")]
    pub migrate_after: Option<Duration>,
}

impl CheckpointArgs {
    /// Whether migratable mode is on.
    pub fn wanted(&self) -> bool {
        self.checkpoint_out.is_some() || self.migrate_to.is_some()
    }

    /// Makes `wasm` migratable and runs it under `policy`, stopping it for a checkpoint
    /// when asked.
    pub fn run(
        &self,
        engine: &Engine,
        cache: Option<PathBuf>,
        wasm: &[u8],
        policy: Policy,
        limits: Limits,
        max_stack: usize,
    ) -> anyhow::Result<ExitCode> {
        self.check_out()?;
        let started = Instant::now();
        let migratable = Migratable::new(engine, &Rewriter::new(cache), wasm)?;
        tracing::info!(elapsed = ?started.elapsed(), "module made migratable");
        if let Some(addr) = self.migrate_to.clone() {
            let after = self.migrate_after.unwrap_or(Duration::ZERO);
            let end = on_guest_thread(max_stack, move || {
                migrate_run(&migratable, &policy, &limits, &addr, after, |line| {
                    eprintln!("{line}")
                })
            })??;
            return Ok(match end {
                MigrateEnd::Migrated(stats) => {
                    eprintln!(
                        "migrated to {}: downtime {:.1} ms, {} rounds, {} KiB sent, {:.1} ms in all",
                        self.migrate_to.as_deref().unwrap_or_default(),
                        stats.downtime.as_secs_f64() * 1e3,
                        stats.rounds,
                        stats.bytes_sent.div_ceil(1024),
                        stats.total.as_secs_f64() * 1e3
                    );
                    if stats.precopy != tern_snapshot::PrecopyEnd::Converged {
                        eprintln!("migration: {}", stats.precopy);
                    }
                    ExitCode::SUCCESS
                }
                MigrateEnd::Finished { outcome, .. } => report(outcome),
            });
        }
        let (trigger, stopping) = self.arm()?;
        let (on_checkpoint, written) = self.on_checkpoint(stopping.clone());
        let end = on_guest_thread(max_stack, move || {
            migratable.run(&policy, &limits, &trigger, on_checkpoint)
        })??;
        self.finish(end, &written, &stopping)
    }

    /// Restores `snapshot` and runs it on.
    pub fn restore(
        &self,
        migratable: Migratable,
        snapshot: Snapshot,
        dirs: Vec<tern_runtime::Preopen>,
        limits: Limits,
        max_stack: usize,
        skip_stdin: bool,
    ) -> anyhow::Result<ExitCode> {
        self.check_out()?;
        let (trigger, stopping) = self.arm()?;
        let (on_checkpoint, written) = self.on_checkpoint(stopping.clone());
        let end = on_guest_thread(max_stack, move || {
            migratable.restore(
                &snapshot,
                &tern_snapshot::Placement {
                    dirs: &dirs,
                    inherit_stdio: true,
                    skip_stdin,
                    limits: &limits,
                },
                &trigger,
                || Ok(()),
                on_checkpoint,
            )
        })??;
        self.finish(end, &written, &stopping)
    }

    /// Checks at once that --checkpoint-out can be written, rather than at the first
    /// checkpoint, minutes later.
    fn check_out(&self) -> anyhow::Result<()> {
        let Some(path) = &self.checkpoint_out else {
            return Ok(());
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        tempfile::NamedTempFile::new_in(dir)
            .map(drop)
            .with_context(|| format!("--checkpoint-out {}: cannot write there", path.display()))
    }

    /// The trigger that stops the guest for each checkpoint, and the signal (SIGTERM or
    /// SIGINT, 0 for none) that asked to stop after the next checkpoint, whatever
    /// --keep-running says.
    fn arm(&self) -> anyhow::Result<(Trigger, Arc<AtomicI32>)> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        let stopping = Arc::new(AtomicI32::new(0));
        let trigger = match self.checkpoint_at_safepoint {
            Some(n) => Trigger::at_safepoint(n),
            None => Trigger::new(),
        };
        if let Some(after) = self.checkpoint_after {
            let t = trigger.clone();
            thread::spawn(move || {
                thread::sleep(after);
                t.fire();
            });
        }
        if self.checkpoint_out.is_some() {
            let mut signals = signal_hook::iterator::Signals::new([SIGUSR1, SIGTERM, SIGINT])
                .context("listening for SIGUSR1, SIGTERM and SIGINT")?;
            let t = trigger.clone();
            let stop = stopping.clone();
            thread::spawn(move || {
                for signal in signals.forever() {
                    if signal == SIGUSR1 {
                        t.fire();
                        continue;
                    }
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    if stop.swap(signal, Ordering::SeqCst) != 0 {
                        // The second one: the guest may be blocked where no safe point
                        // comes (a read of a terminal); stop as that signal would.
                        eprintln!("tern: {name} again: stopping without a checkpoint");
                        std::process::exit(128 + signal);
                    }
                    eprintln!(
                        "tern: {name}: checkpointing at the next safe point, then stopping ({name} again stops at once)"
                    );
                    t.fire();
                }
            });
        }
        Ok((trigger, stopping))
    }

    /// What to do with each captured snapshot: write it to --checkpoint-out, then stop
    /// the guest, or let it carry on with --keep-running. A snapshot that cannot be
    /// written is reported and the guest carries on: stopping would lose it. The flag
    /// says whether any snapshot was written.
    fn on_checkpoint(
        &self,
        stopping: Arc<AtomicI32>,
    ) -> (
        impl FnMut(Captured<'_>) -> Checkpoint + Send + 'static,
        Arc<AtomicU8>,
    ) {
        let path = self.checkpoint_out.clone();
        let keep_running = self.keep_running;
        let written = Arc::new(AtomicU8::new(NONE_WRITTEN));
        let flag = written.clone();
        let callback = move |captured: Captured<'_>| {
            let Some(path) = &path else {
                return Checkpoint::Continue;
            };
            let snapshot = captured.to_snapshot();
            let result = snapshot
                .encode()
                .map_err(anyhow::Error::from)
                .and_then(|bytes| {
                    tern_runtime::write_atomically(path, &bytes)
                        .with_context(|| format!("writing snapshot {}", path.display()))?;
                    Ok(bytes.len())
                });
            match result {
                Ok(len) => {
                    flag.store(WRITTEN, Ordering::SeqCst);
                    eprintln!(
                        "checkpoint: {} written ({} KiB, {} of {} pages non-zero); resume with `{}`",
                        path.display(),
                        len.div_ceil(1024),
                        snapshot.pages.len(),
                        snapshot.meta.memory_pages,
                        resume_command(&captured, &snapshot, path)
                    );
                    if keep_running && stopping.load(Ordering::SeqCst) == 0 {
                        Checkpoint::Continue
                    } else {
                        Checkpoint::Stop
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}; the guest carries on");
                    let _ = flag.compare_exchange(
                        NONE_WRITTEN,
                        FAILED,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                    Checkpoint::Continue
                }
            }
        };
        (callback, written)
    }

    fn finish(
        &self,
        end: RunEnd,
        written: &AtomicU8,
        stopping: &AtomicI32,
    ) -> anyhow::Result<ExitCode> {
        match end {
            RunEnd::Finished(outcome) => {
                let asked =
                    self.checkpoint_after.is_some() || self.checkpoint_at_safepoint.is_some();
                match written.load(Ordering::SeqCst) {
                    NONE_WRITTEN if asked => eprintln!(
                        "note: the guest ended before its checkpoint; no snapshot written"
                    ),
                    FAILED => eprintln!(
                        "note: the guest ended; no snapshot was written (see the error above)"
                    ),
                    _ => {}
                }
                Ok(report(outcome))
            }
            // Stopped by a signal, the snapshot written: the signal's status, so that
            // `tern run … && next` does not carry on after a Ctrl-C.
            RunEnd::Stopped => Ok(match stopping.load(Ordering::SeqCst) {
                0 => ExitCode::SUCCESS,
                signal => ExitCode::from((128 + signal) as u8),
            }),
        }
    }
}

/// The `tern restore` command line that resumes `snapshot` here: a `--dir` or
/// `--ro-dir` for each volume, mapped to the directory it has now.
fn resume_command(captured: &Captured<'_>, snapshot: &Snapshot, path: &Path) -> String {
    let mut words = vec!["tern".to_owned(), "restore".to_owned()];
    for v in &snapshot.meta.wasi.volumes {
        let Some((_, host)) = captured.volume_hosts().iter().find(|(g, _)| *g == v.guest) else {
            continue;
        };
        let flag = if v.read_only { "--ro-dir" } else { "--dir" };
        words.push(flag.to_owned());
        words.push(shell_word(&format!("{}::{}", host.display(), v.guest)));
    }
    words.push(shell_word(&path.display().to_string()));
    words.join(" ")
}

/// `word` as a POSIX shell reads it back: quoted when it holds anything but plain
/// characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-:+=@%,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
