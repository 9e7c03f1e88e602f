//! `tern restore`: resume a guest from a snapshot written by `tern run --checkpoint-*`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{DirAccess, Preopen};
use tern_snapshot::{Migratable, Snapshot};

use crate::common::{Watchdog, positive_duration};

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
    landing: crate::landing::LandingArgs,

    /// Wall-clock limit for the resumed run.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    timeout: Option<Duration>,

    /// Restore even when a volume's files differ from what the guest left (a file it
    /// wrote has changed since, or is gone): each difference is listed first. Without
    /// it, such a restore is refused and nothing runs. A file the guest has open must
    /// still exist, even so.
    #[arg(long)]
    force: bool,

    /// Give the guest this stdin from its start. By default the bytes of stdin the
    /// guest had read before its checkpoint are skipped first, so that `tern restore
    /// app.snap < same-input` carries on where it stopped (not from a terminal).
    #[arg(long)]
    stdin_from_start: bool,

    #[command(flatten)]
    checkpoint: crate::checkpoint::CheckpointArgs,
}

impl RestoreCommand {
    /// Checks the mapping of volumes to directories before anything else is said: every
    /// volume mapped, no mapping for a volume the snapshot lacks (a note), and no volume
    /// mapped read-only where the guest has a file open for writing.
    fn check_mapping(&self, snapshot: &Snapshot, dirs: &[Preopen]) -> anyhow::Result<()> {
        let volumes = &snapshot.meta.wasi.volumes;
        for v in volumes {
            let Some(dir) = dirs.iter().find(|d| d.guest == v.guest) else {
                anyhow::bail!(
                    "volume {} of the snapshot has no host directory; pass --dir HOST::{}",
                    v.guest,
                    v.guest
                );
            };
            let writing = snapshot
                .meta
                .wasi
                .files
                .iter()
                .find(|f| f.volume == v.guest && f.writable());
            if let (Some(f), DirAccess::ReadOnly, false) = (writing, dir.access, v.read_only) {
                anyhow::bail!(
                    "the guest has {} in volume {} open for writing; map it with --dir, not --ro-dir",
                    f.path,
                    v.guest
                );
            }
        }
        for d in dirs {
            if !volumes.iter().any(|v| v.guest == d.guest) {
                let names: Vec<&str> = volumes.iter().map(|v| v.guest.as_str()).collect();
                eprintln!(
                    "note: {} is not a volume of this snapshot (its volumes: {}); its directory is not used",
                    d.guest,
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
        Ok(())
    }

    /// Compares the host directories with the files the guest left; refuses at the
    /// first that differs unless `--force`, which lists them all.
    fn check_volumes(&self, snapshot: &Snapshot, dirs: &[Preopen]) -> anyhow::Result<()> {
        let found = tern_snapshot::check_volumes(&snapshot.meta.wasi.volume_files, dirs);
        if let Some(first) = found.iter().find(|m| m.matters())
            && !self.force
        {
            anyhow::bail!(
                "{first}; the volume is not as the guest left it at its checkpoint, so nothing was restored (--force restores anyway)"
            );
        }
        for m in &found {
            let kind = if m.matters() { "warning" } else { "note" };
            eprintln!("{kind}: {m}");
        }
        Ok(())
    }

    /// Whether to skip the `consumed` bytes of stdin the guest had read, said in one
    /// line. A terminal is never skipped: what was typed before is gone already.
    fn stdin_skip(&self, consumed: u64) -> bool {
        if consumed == 0 {
            return false;
        }
        if self.stdin_from_start {
            eprintln!(
                "restore: the guest had read {consumed} bytes of stdin; it reads this stdin from its start (--stdin-from-start)"
            );
            return false;
        }
        if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            eprintln!(
                "restore: the guest had read {consumed} bytes of stdin; stdin is a terminal, so it reads what is typed from now on"
            );
            return false;
        }
        eprintln!(
            "restore: the guest had read {consumed} bytes of stdin; skipping as many of this stdin before it reads again (--stdin-from-start to replay them)"
        );
        true
    }

    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(&self.snapshot)
            .with_context(|| format!("cannot read snapshot {}", self.snapshot.display()))?;
        let snapshot = Snapshot::decode(&bytes)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let engine = self.landing.engine()?;
        let migratable = Migratable::new(&engine, &self.landing.rewriter(), &snapshot.module)
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let dirs = self.landing.dirs()?;
        self.check_mapping(&snapshot, &dirs)
            .and_then(|()| self.check_volumes(&snapshot, &dirs))
            .with_context(|| format!("cannot restore {}", self.snapshot.display()))?;
        let limits = self.landing.limits();
        let skip_stdin = self.stdin_skip(snapshot.meta.wasi.stdin_consumed);
        let watchdog = self.timeout.map(Watchdog::start);
        let code = self
            .checkpoint
            .restore(
                migratable,
                snapshot,
                dirs,
                limits,
                self.landing.engine.max_stack,
                skip_stdin,
            )
            .with_context(|| format!("cannot restore {}", self.snapshot.display()));
        if let Some(w) = watchdog {
            w.disarm();
        }
        code
    }
}
