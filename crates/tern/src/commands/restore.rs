//! `tern restore`: resume a guest from a snapshot written by `tern run --checkpoint-*`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tern_snapshot::{Migratable, Snapshot};

use super::run::{Watchdog, positive_duration};

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

    #[command(flatten)]
    landing: super::landing::LandingArgs,

    /// Wall-clock limit for the resumed run.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    timeout: Option<Duration>,

    #[command(flatten)]
    checkpoint: super::checkpoint::CheckpointArgs,
}

impl RestoreCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(&self.snapshot)
            .with_context(|| format!("cannot read snapshot {}", self.snapshot.display()))?;
        let snapshot = Snapshot::decode(&bytes)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let engine = self.landing.engine()?;
        let migratable = Migratable::new(&engine, &self.landing.rewriter(), &snapshot.module)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let dirs = self.landing.dirs()?;
        let limits = self.landing.limits();
        let watchdog = self.timeout.map(Watchdog::start);
        let code = self
            .checkpoint
            .restore(migratable, snapshot, dirs, limits, self.landing.max_stack)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()));
        if let Some(w) = watchdog {
            w.disarm();
        }
        code
    }
}
