//! `tern restore`: resume a guest from a snapshot written by `tern run --checkpoint-*`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{Engine, EngineKind, EngineOptions, Limits, Preopen, parse_size};
use tern_snapshot::{Migratable, Rewriter, Snapshot};

use super::run::{Watchdog, positive_duration, read_only_dir, read_write_dir, stack_size};

/// Resume a checkpointed program where it stopped, on this machine, under either engine.
///
/// The snapshot carries the module, its memory, globals, stack, arguments, environment
/// and open files. Its volumes (the directories it had preopened) are mapped to host
/// directories with --dir GUEST's new HOST; stdout continues where it stopped. Exit
/// status: the guest's, as for `tern run`.
#[derive(Debug, Args)]
pub struct RestoreCommand {
    /// Snapshot file.
    #[arg(value_name = "SNAPSHOT")]
    snapshot: PathBuf,

    /// Map a volume of the snapshot to a host directory, read-write (HOST::GUEST, where
    /// GUEST is the path the guest knew it by). Repeatable.
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = read_write_dir)]
    dirs: Vec<Preopen>,

    /// Map a volume read-only. Repeatable.
    #[arg(long = "ro-dir", value_name = "HOST::GUEST", value_parser = read_only_dir)]
    ro_dirs: Vec<Preopen>,

    /// Execution engine: cranelift (native code) or pulley (portable interpreter). A
    /// snapshot restores under either, whichever engine took it.
    #[arg(long, value_name = "ENGINE", value_parser = super::parse_engine, default_value = "cranelift")]
    engine: EngineKind,

    /// Cap on the guest's linear memory, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,

    /// Wall-clock limit for the resumed run.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    timeout: Option<Duration>,

    /// Bound on the native stack used by Wasm frames, from 16KiB to 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = stack_size, default_value = "512KiB")]
    max_stack: usize,

    /// Do not read or write the cache of rewritten modules.
    #[arg(long)]
    no_cache: bool,

    /// Cache directory [default: as for `tern run`].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    #[command(flatten)]
    checkpoint: super::checkpoint::CheckpointArgs,
}

impl RestoreCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(&self.snapshot)
            .with_context(|| format!("cannot read snapshot {}", self.snapshot.display()))?;
        let snapshot = Snapshot::decode(&bytes)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let engine = Engine::new(EngineOptions {
            kind: self.engine,
            max_stack: self.max_stack,
            ..EngineOptions::default()
        })?;
        let cache = super::cache_root(self.no_cache, self.cache_dir.as_deref())
            .map(|d| d.join("migratable"));
        let migratable = Migratable::new(&engine, &Rewriter::new(cache), &snapshot.module)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let dirs: Vec<Preopen> = self.dirs.iter().chain(&self.ro_dirs).cloned().collect();
        let limits = Limits {
            max_memory: self.max_memory,
            ..Limits::default()
        };
        let watchdog = self.timeout.map(Watchdog::start);
        let code = self
            .checkpoint
            .restore(migratable, snapshot, dirs, limits, self.max_stack)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()));
        if let Some(w) = watchdog {
            w.disarm();
        }
        code
    }
}
