//! `tern receive`: wait for one live migration from `tern run --migrate-to` and run the
//! guest to its end here.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{Engine, EngineKind, EngineOptions, Limits, Preopen, parse_size};
use tern_snapshot::{Rewriter, RunEnd, receive};

use super::checkpoint::on_guest_thread;
use super::run::{read_only_dir, read_write_dir, report, stack_size};

/// Receive one migrating guest and run it to completion in the given volume directories.
///
/// Listens on ADDR, accepts one migration, copies its memory and volume files as they
/// come, restores it, confirms to the source and runs it. Exit status: the guest's, as
/// for `tern run`; 1 when the migration breaks off (the source then keeps the guest).
#[derive(Debug, Args)]
pub struct ReceiveCommand {
    /// Address to listen on, HOST:PORT (e.g. 127.0.0.1:7070, 0.0.0.0:7070).
    #[arg(long, value_name = "ADDR")]
    listen: String,

    /// Map a volume of the incoming guest to a host directory, read-write (HOST::GUEST).
    /// Its files arrive there. Repeatable.
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = read_write_dir)]
    dirs: Vec<Preopen>,

    /// Map a volume read-only. Repeatable.
    #[arg(long = "ro-dir", value_name = "HOST::GUEST", value_parser = read_only_dir)]
    ro_dirs: Vec<Preopen>,

    /// Execution engine for the guest here.
    #[arg(long, value_name = "ENGINE", value_parser = super::parse_engine, default_value = "cranelift")]
    engine: EngineKind,

    /// Cap on the guest's linear memory, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,

    /// Bound on the native stack used by Wasm frames, from 16KiB to 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = stack_size, default_value = "512KiB")]
    max_stack: usize,

    /// Do not read or write the cache of rewritten modules.
    #[arg(long)]
    no_cache: bool,

    /// Cache directory [default: as for `tern run`].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl ReceiveCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let listener = TcpListener::bind(&self.listen)
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let local = listener.local_addr().context("listening socket")?;
        eprintln!("receive: listening on {local}");
        let engine = Engine::new(EngineOptions {
            kind: self.engine,
            max_stack: self.max_stack,
            ..EngineOptions::default()
        })?;
        let rewriter = Rewriter::new(
            super::cache_root(self.no_cache, self.cache_dir.as_deref())
                .map(|d| d.join("migratable")),
        );
        let dirs: Vec<Preopen> = self.dirs.iter().chain(&self.ro_dirs).cloned().collect();
        for d in &dirs {
            if !d.host.is_dir() {
                anyhow::bail!("--dir {}: not a directory", d.host.display());
            }
        }
        let limits = Limits {
            max_memory: self.max_memory,
            ..Limits::default()
        };
        let end = on_guest_thread(self.max_stack, move || {
            receive(listener, &engine, &rewriter, &dirs, &limits, |line| {
                eprintln!("{line}")
            })
        })?
        .context("receiving a migration")?;
        Ok(match end {
            RunEnd::Finished(outcome) => report(outcome),
            RunEnd::Stopped => ExitCode::SUCCESS,
        })
    }
}
