//! `tern bench`: end-to-end benchmarks. Results are tables on stdout; `--json` keeps
//! every raw sample.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tern_bench::startup::{self, StartupOptions};

/// Measure Tern end to end and print tables with medians and spreads.
#[derive(Debug, Args)]
pub struct BenchCommand {
    #[command(subcommand)]
    suite: Suite,
}

#[derive(Debug, Subcommand)]
enum Suite {
    /// Start-up: in-process instantiation from a cached artifact, and `tern run
    /// hello.wasm` wall time against a native hello and the Wasmtime CLI.
    Startup(StartupArgs),
}

#[derive(Debug, Args)]
struct StartupArgs {
    /// Samples per measurement.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Wasmtime CLI to compare with [default: `wasmtime` on PATH].
    #[arg(long, value_name = "PATH")]
    wasmtime: Option<PathBuf>,
    /// Write every raw sample as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl BenchCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        match self.suite {
            Suite::Startup(a) => {
                let tern = std::env::current_exe().context("locating the tern binary")?;
                eprintln!("measuring start-up, {} runs each …", a.runs);
                let report = startup::run(&StartupOptions {
                    runs: a.runs,
                    tern,
                    wasmtime: a.wasmtime,
                })?;
                println!("{}", machine_line());
                print!("{}", report.render());
                if let Some(path) = a.json {
                    let text = serde_json::to_string_pretty(&report)?;
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                Ok(())
            }
        }
    }
}

/// `machine: <cpu model>, <n> cores, <kernel>` for the head of every result.
fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "machine: {cpu}, {cores} cores, tern {}",
        env!("CARGO_PKG_VERSION")
    )
}
