//! `tern run`: run a WASI command module (`.wasm`, `.wat` or `.cwasm`) to completion.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{ArtifactCache, Engine, EngineOptions, Limits, Policy, Program, load_module};

use crate::common::{DirArgs, EngineArgs, Watchdog, on_guest_thread, positive_duration, report};

/// Run a WebAssembly program (WASI preview1 command) with no access to the host beyond
/// what the flags grant.
///
/// Exit status: the guest's own exit code; 121 stack limit, 122 memory limit,
/// 123 fuel exhausted, 124 timeout, 125 trap, 141 its stdout or stderr was closed (as
/// SIGPIPE); 1 when Tern cannot start the guest, 2 for a bad command line.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// Module to run (a Wasm binary, WebAssembly text, or an artifact from `tern
    /// compile`), then the guest's arguments. Everything after MODULE goes to the guest,
    /// flags included; Tern's own options come before MODULE.
    #[arg(
        value_name = "MODULE [ARGS]...",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    command: Vec<String>,

    #[command(flatten)]
    dirs: DirArgs,

    #[command(flatten)]
    engine: EngineArgs,

    /// Set an environment variable for the guest (KEY=VALUE; the value may contain `=`;
    /// the last of a repeated KEY wins). No host variable is passed unless given here.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = Policy::parse_env)]
    envs: Vec<(String, String)>,

    /// Wall-clock limit, e.g. 2s, 500ms, 5m. Stops guests that never call the host too.
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    timeout: Option<Duration>,

    /// CPU budget in units of fuel (about one per Wasm instruction). Fuel metering
    /// slows code down, so it is only compiled in when this flag is given.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// Compile the guest's libc `memcpy`, `memmove`, `memset`, `memcmp` and `strlen` as
    /// written, without Tern's fast paths (`memory.copy`/`memory.fill`, eight bytes per
    /// step); results are the same either way, this is for comparisons. Plain runs only:
    /// migratable runs always take the fast paths.
    #[arg(long)]
    keep_libc: bool,

    /// Compile loops as written, without Tern's loop vectoriser (innermost float loops
    /// of scalar code run two or four iterations at a time on 128-bit vectors, after
    /// checks that make the results bit for bit the same); this is for comparisons.
    /// Cranelift plain runs only.
    #[arg(long)]
    no_vectorize: bool,

    /// Back the guest's memory with ordinary 4 KiB pages, without asking the kernel for
    /// transparent huge pages (2 MiB, fewer TLB misses for guests that stride over large
    /// arrays); this is for comparisons. Results are the same either way.
    #[arg(long)]
    no_huge_pages: bool,

    /// argv[0] as the guest sees it [default: the module's file name].
    #[arg(long, value_name = "NAME")]
    argv0: Option<String>,

    #[command(flatten)]
    checkpoint: crate::checkpoint::CheckpointArgs,
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let module = PathBuf::from(&self.command[0]);
        let engine = Engine::new(EngineOptions {
            kind: self.engine.engine,
            target: None,
            fuel: self.fuel.is_some(),
            max_stack: self.engine.max_stack,
            // `--timeout` is enforced by the watchdog below, not by epoch checks in the
            // generated code: those cost up to 8x in tight loops (gemm, measured).
            interruptible: false,
            libc_builtins: !self.keep_libc,
            vectorize: !self.no_vectorize,
            huge_pages: !self.no_huge_pages,
        })?;
        let cache = self.engine.cache_root().map(ArtifactCache::new);
        let policy = self.policy(&module)?;
        let limits = Limits {
            max_memory: self.engine.max_memory,
            timeout: None,
            fuel: self.fuel,
            ..Limits::default()
        };
        if self.checkpoint.wanted() {
            let wasm = crate::common::read_wasm(&module)?;
            let watchdog = self.timeout.map(Watchdog::start);
            let code = self.checkpoint.run(
                &engine,
                cache.as_ref().map(|c| c.dir().join("migratable")),
                &wasm,
                policy,
                limits,
                self.engine.max_stack,
            );
            if let Some(w) = watchdog {
                w.disarm();
            }
            return code;
        }
        let loaded = load_module(&engine, &module, cache.as_ref())?;
        tracing::debug!(digest = %loaded.digest, cache = ?loaded.cache, "module loaded");
        let program = Program::new(&engine, loaded.module)
            .with_context(|| format!("cannot run {}", module.display()))?;

        let watchdog = self.timeout.map(Watchdog::start);
        let outcome =
            on_guest_thread(self.engine.max_stack, move || program.run(&policy, &limits))??;
        if let Some(w) = watchdog {
            w.disarm();
        }
        Ok(report(outcome))
    }

    fn policy(&self, module: &std::path::Path) -> anyhow::Result<Policy> {
        let argv0 = self.argv0.clone().unwrap_or_else(|| {
            module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| module.display().to_string())
        });
        let preopens = self.dirs.all();
        for (i, p) in preopens.iter().enumerate() {
            if preopens[..i].iter().any(|q| q.guest == p.guest) {
                anyhow::bail!(
                    "guest path `{}` is preopened twice (--dir/--ro-dir)",
                    p.guest
                );
            }
        }
        // The last of a repeated key wins, as in a shell.
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.envs {
            env.retain(|(key, _)| key != k);
            env.push((k.clone(), v.clone()));
        }
        // `tern run app.wasm -- args`: the first `--` after MODULE only separates.
        let mut guest_args = &self.command[1..];
        if guest_args.first().is_some_and(|a| a == "--") {
            guest_args = &guest_args[1..];
        }
        Ok(Policy {
            args: std::iter::once(argv0)
                .chain(guest_args.iter().cloned())
                .collect(),
            env,
            preopens,
            inherit_stdio: true,
        })
    }
}
