//! `tern run`: run a WASI command module (`.wasm`, `.wat` or `.cwasm`) to completion.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{
    ArtifactCache, DirAccess, Engine, EngineKind, EngineOptions, LimitExceeded, Limits, Outcome,
    Policy, Preopen, Program, load_module, parse_duration, parse_size,
};

use crate::exit;

/// Run a WebAssembly program (WASI preview1 command) with no access to the host beyond
/// what the flags grant.
///
/// Exit status: the guest's own exit code; 121 stack limit, 122 memory limit,
/// 123 fuel exhausted, 124 timeout, 125 trap; 1 when Tern cannot start the guest.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// Module to run: a Wasm binary, WebAssembly text, or an artifact from `tern compile`.
    #[arg(value_name = "MODULE")]
    module: PathBuf,

    /// Arguments passed to the guest (after `--`, or after MODULE).
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<String>,

    /// Preopen a host directory read-write, as GUEST inside (default: same path).
    /// Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    dirs: Vec<String>,

    /// Preopen a host directory read-only: writes fail inside the guest. Repeatable.
    #[arg(long = "ro-dir", value_name = "HOST[::GUEST]")]
    ro_dirs: Vec<String>,

    /// Set an environment variable for the guest (KEY=VALUE; the value may contain `=`).
    /// No host variable is passed unless given here. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    envs: Vec<String>,

    /// Cap on the guest's linear memory, e.g. 64MiB, 512K, 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,

    /// Wall-clock limit, e.g. 2s, 500ms, 5m. Stops guests that never call the host too.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// CPU budget in units of fuel (about one per Wasm instruction). Fuel metering
    /// slows code down, so it is only compiled in when this flag is given.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Bound on the native stack used by Wasm frames, e.g. 512KiB, 1MiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "512KiB")]
    max_stack: u64,

    /// Execution engine: cranelift (native code) or pulley (portable interpreter).
    #[arg(long, value_name = "ENGINE", value_parser = super::parse_engine, default_value = "cranelift")]
    engine: EngineKind,

    /// Do not read or write the compiled-artifact cache.
    #[arg(long)]
    no_cache: bool,

    /// Artifact cache directory [default: $TERN_CACHE_DIR, $XDG_CACHE_HOME/tern/artifacts
    /// or ~/.cache/tern/artifacts].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// argv[0] as the guest sees it [default: the module's file name].
    #[arg(long, value_name = "NAME")]
    argv0: Option<String>,
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let max_stack = usize::try_from(self.max_stack)
            .ok()
            .filter(|s| (16 * 1024..=256 << 20).contains(s))
            .context("--max-stack must be between 16KiB and 256MiB")?;
        let engine = Engine::new(EngineOptions {
            kind: self.engine,
            target: None,
            fuel: self.fuel.is_some(),
            max_stack,
        })?;
        let cache = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(ArtifactCache::default_dir)
                .map(ArtifactCache::new)
        };
        let loaded = load_module(&engine, &self.module, cache.as_ref())?;
        tracing::debug!(digest = %loaded.digest, cache = ?loaded.cache, "module loaded");
        let program = Program::new(&engine, loaded.module)
            .with_context(|| format!("cannot run {}", self.module.display()))?;

        let policy = self.policy()?;
        let limits = Limits {
            max_memory: self.max_memory,
            timeout: self.timeout,
            fuel: self.fuel,
            ..Limits::default()
        };
        let watchdog = self.timeout.map(spawn_watchdog);
        let outcome = program.run(&policy, &limits)?;
        drop(watchdog);
        Ok(report(outcome))
    }

    fn policy(&self) -> anyhow::Result<Policy> {
        let argv0 = self.argv0.clone().unwrap_or_else(|| {
            self.module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.module.display().to_string())
        });
        let mut preopens = Vec::new();
        for d in &self.dirs {
            preopens.push(Preopen::parse(d, DirAccess::ReadWrite).context("--dir")?);
        }
        for d in &self.ro_dirs {
            preopens.push(Preopen::parse(d, DirAccess::ReadOnly).context("--ro-dir")?);
        }
        let env = self
            .envs
            .iter()
            .map(|e| Policy::parse_env(e).context("--env"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Policy {
            args: std::iter::once(argv0)
                .chain(self.args.iter().cloned())
                .collect(),
            env,
            preopens,
            inherit_stdio: true,
        })
    }
}

/// Prints how the guest ended (nothing for a normal exit) and picks the exit code.
fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Exited(code) => ExitCode::from(code as u8),
        Outcome::LimitExceeded(limit) => {
            eprintln!("error: {limit}");
            ExitCode::from(exit::for_limit(&limit))
        }
        Outcome::Trapped { message, backtrace } => {
            eprintln!("error: guest trapped: {message}");
            if let Some(bt) = backtrace {
                eprintln!("{}", bt.trim_end());
            }
            ExitCode::from(exit::TRAP)
        }
    }
}

/// Wasm code is stopped by the epoch deadline, but a guest blocked inside a host call
/// (reading a pipe, sleeping) never reaches a check. This thread ends the process a
/// little after the deadline if the guest is still running; dropping the returned
/// sender disarms it.
fn spawn_watchdog(limit: Duration) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let grace = Duration::from_millis(250);
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit + grace) {
            let _ = std::io::stdout().flush();
            eprintln!("error: {}", LimitExceeded::Timeout { limit });
            std::process::exit(exit::TIMEOUT.into());
        }
    });
    tx
}
