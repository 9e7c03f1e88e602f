//! `tern bench`: end-to-end benchmarks. Results are tables on stdout; `--json` keeps
//! every raw sample.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tern_bench::cluster::{self, ClusterOptions};
use tern_bench::migration::{self, MigrationOptions};
use tern_bench::polybench::{self, Dataset};
use tern_bench::progress::Progress;
use tern_bench::report::SuiteReport;
use tern_bench::runner::{self, Build, Runner};
use tern_bench::sqlite::{self, Storage};
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
    /// PolyBench/C 4.2.1: 30 kernels, native (clang -O3) against Tern and peer
    /// runtimes, scalar and SIMD Wasm builds; checksums must match native.
    Polybench(PolybenchArgs),
    /// Four compute programs that are not PolyBench (graph relaxation, hash table,
    /// matrix multiply, 2-D stencil), native against Tern and peers, like polybench.
    Compute(ComputeArgs),
    /// SQLite's speedtest1 (from Debian's sqlite3 source package, with the amalgamation
    /// of the libsqlite3-sys crate), in memory and on disk, native against Tern and peers.
    Sqlite(SqliteArgs),
    /// Checkpoints and live migration: time to safe point (p50/p99), migratable-mode
    /// overhead on PolyBench, snapshot size, and downtime and total time of live
    /// migrations of 1 to 256 MiB working sets between two `tern` processes on loopback.
    Migration(MigrationArgs),
    /// The control plane at scale: the scheduler alone placing 10,000 apps on 1,000
    /// simulated nodes; the whole control plane (a real nats-server and `tern
    /// controller`) with 1,000 simulated agents heartbeating, 10,000 deployments through
    /// the API and 100 nodes going silent, with its CPU and memory; and a real `tern
    /// up` continuum, with a node killed under its app and live migrations.
    Cluster(ClusterArgs),
    /// What the backbone's durability costs a checkpoint: storing checkpoint bundles
    /// (64 KiB, 1 MiB, 16 MiB) on a nats-server that syncs every write before it is
    /// acknowledged, as Tern runs it, against one with JetStream's default, interleaved.
    Durability(DurabilityArgs),
    /// Print the table of a saved run (`--json` of polybench, compute or sqlite) again, and
    /// optionally plot it, without running anything.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
struct MigrationArgs {
    /// Working-set sizes in MiB, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    sizes: Vec<u32>,
    /// Migrations per size, and runs per PolyBench kernel.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    runs: usize,
    /// PolyBench dataset for time to safe point and overhead.
    #[arg(long, default_value = "medium")]
    size: Dataset,
    /// Skip the migrations through the emulated 100 Mbit/s, 20 ms link (a relay in
    /// process; each takes seconds).
    #[arg(long)]
    no_link: bool,
    /// Also migrate each size through two nodes' TLS migration streams on loopback (as
    /// a continuum's nodes carry them), interleaved run by run with the plain
    /// migrations: what encryption and mutual authentication cost.
    #[arg(long)]
    tls: bool,
    /// Write every raw sample as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw downtime and total time against working set to FILE.svg and FILE.png.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct DurabilityArgs {
    /// Stores of each size on each server.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    runs: usize,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct ClusterArgs {
    /// Simulated nodes, a third each cloud, edge and IoT.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    nodes: usize,
    /// Apps placed one after another.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one)]
    apps: usize,
    /// Sites the nodes are spread over, with a round trip measured between each pair.
    #[arg(long, default_value_t = 20, value_parser = at_least_one)]
    sites: usize,
    /// Placement waves to time.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    runs: usize,
    /// Continuums started (`tern up`), each with a node killed under its app.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    trials: usize,
    /// Live migrations per trial, through the control plane and directly.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    migrations: usize,
    /// Only the simulated placement: no continuum is started.
    #[arg(long)]
    placement_only: bool,
    /// Only the whole control plane (nats-server and `tern controller` with --nodes
    /// simulated agents and --apps deployments through the API).
    #[arg(long, conflicts_with = "placement_only")]
    control_plane_only: bool,
    /// Simulated nodes that go silent at once, after the deployments, for the failover.
    #[arg(long, default_value_t = 100)]
    kill: usize,
    /// Deployments submitted at once through the API.
    #[arg(long, default_value_t = 8, value_parser = at_least_one)]
    submitters: usize,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
    /// Write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ReportArgs {
    /// A JSON file written by `tern bench polybench|compute|sqlite --json`.
    #[arg(value_name = "FILE.json")]
    json: PathBuf,
    /// Draw it to FILE.svg and FILE.png.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SqliteArgs {
    /// speedtest1 --size (100 is the usual benchmark; 5 is a quick check).
    #[arg(long, default_value_t = 100)]
    size: u32,
    /// Database storage: memdb (the paper's setting), disk (a file in a preopened
    /// directory) or both.
    #[arg(long, default_value = "both", value_parser = ["memdb", "disk", "both"])]
    storage: String,
    /// Test numbers to report, comma-separated (e.g. 100,410) [default: all]; TOTAL is
    /// always reported.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    tests: Vec<String>,
    /// Where fetched sources and builds are kept.
    #[arg(long, value_name = "DIR", default_value = "target/sqlite-src")]
    sources: PathBuf,
    #[command(flatten)]
    common: RuntimeArgs,
}

/// Options shared by the suites that compare runtimes.
#[derive(Debug, Args)]
struct RuntimeArgs {
    /// Runs per item and runner (interleaved across runners).
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    runs: usize,
    /// Wasm builds to run: scalar, simd or both.
    #[arg(long, value_name = "WHICH", default_value = "both", value_parser = ["scalar", "simd", "both"])]
    builds: String,
    /// Also run Tern on Pulley, Wasmtime's interpreter (tens of times slower).
    #[arg(long)]
    pulley: bool,
    /// Do not look for peer runtimes (Wasmtime CLI, Wasmtime's Python bindings, Node).
    #[arg(long)]
    no_peers: bool,
    /// A peer runtime as NAME=TEMPLATE, run by `sh -c` with {wasm}, {aot} (a scratch
    /// path for an ahead-of-time artifact), {dir} (directory to preopen as /data) and
    /// {args}; e.g. `wamr='wamrc -o {aot} {wasm} >/dev/null && iwasm {aot} {args}'`.
    /// Repeatable.
    #[arg(long = "peer", value_name = "NAME=TEMPLATE")]
    peers: Vec<String>,
    /// Where scripts/peers.sh installed peer runtimes.
    #[arg(long, value_name = "DIR", default_value = "target/peers")]
    peers_dir: PathBuf,
    /// Write every raw sample as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Draw normalised time per item and runner to FILE.svg and FILE.png.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Hide progress bars.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct PolybenchArgs {
    /// Dataset size: mini, small, medium, large or extralarge.
    #[arg(long, default_value = "large")]
    size: Dataset,
    /// Kernels to run, comma-separated [default: all 30].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    kernels: Vec<String>,
    #[command(flatten)]
    common: RuntimeArgs,
}

#[derive(Debug, Args)]
struct ComputeArgs {
    /// Problem size: mini (a quick check) or large (about a second each natively).
    #[arg(long, default_value = "large", value_parser = compute_size)]
    size: Dataset,
    /// Programs to run, comma-separated [default: all: graph, hashtable, matmul, stencil].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    programs: Vec<String>,
    #[command(flatten)]
    common: RuntimeArgs,
}

fn compute_size(s: &str) -> Result<Dataset, String> {
    match s.to_ascii_lowercase().as_str() {
        "mini" => Ok(Dataset::Mini),
        "large" => Ok(Dataset::Large),
        _ => Err(format!("unknown size `{s}` (mini or large)")),
    }
}

impl RuntimeArgs {
    fn wasm_builds(&self) -> Vec<Build> {
        polybench::builds(self.builds != "simd", self.builds != "scalar")
    }

    /// Native first (the baseline), then Tern, then peers.
    fn runners(&self, scratch: &std::path::Path) -> anyhow::Result<(Vec<Runner>, runner::Skipped)> {
        let tern = std::env::current_exe().context("locating the tern binary")?;
        let builds = self.wasm_builds();
        let mut runners = vec![Runner::native()];
        let mut skipped = Vec::new();
        for &b in &builds {
            runners.push(Runner::tern(&tern, "cranelift", b));
            if self.pulley {
                runners.push(Runner::tern(&tern, "pulley", b));
            }
        }
        if !self.no_peers {
            let (found, missing) = runner::discover_peers(scratch, &self.peers_dir, &builds);
            runners.extend(found);
            skipped.extend(missing);
        }
        for spec in &self.peers {
            let (name, template) = spec
                .split_once('=')
                .filter(|(n, t)| !n.is_empty() && !t.is_empty())
                .with_context(|| format!("--peer: expected NAME=TEMPLATE, got `{spec}`"))?;
            for &b in &builds {
                runners.push(Runner::template(name, template, b));
            }
        }
        Ok((runners, skipped))
    }

    /// Progress bars on stderr, unless `--quiet` or stderr is not a terminal.
    fn progress(&self) -> Progress {
        Progress::new(!self.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    /// Builds a suite of C programs with `build` in a scratch directory, runs them on
    /// every runner and prints (and saves) the report.
    fn programs(
        &self,
        suite: &str,
        size: Dataset,
        build: impl FnOnce(
            &std::path::Path,
            &Progress,
        ) -> anyhow::Result<Vec<(String, tern_bench::runner::Program)>>,
    ) -> anyhow::Result<()> {
        let scratch = tempfile::tempdir().context("creating a scratch directory")?;
        let progress = self.progress();
        let programs = build(scratch.path(), &progress)?;
        let (runners, skipped) = self.runners(scratch.path())?;
        let mut report = SuiteReport {
            suite: suite.into(),
            setting: format!("{}, {} runs, clang-19 -O3", size.name(), self.runs),
            runners: runners.iter().map(|r| r.name.clone()).collect(),
            skipped,
            ..SuiteReport::default()
        };
        polybench::measure(&programs, &runners, self.runs, &mut report, &progress)?;
        self.finish(&report)
    }

    fn finish(&self, report: &SuiteReport) -> anyhow::Result<()> {
        println!("{}", machine_line());
        print!("{}", report.render());
        if let Some(path) = &self.json {
            let text = serde_json::to_string_pretty(report)?;
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        if let Some(path) = &self.plot {
            tern_bench::plot::write(report, path)?;
            eprintln!(
                "plot written to {} and {}",
                path.with_extension("svg").display(),
                path.with_extension("png").display()
            );
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
struct StartupArgs {
    /// Samples per measurement.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
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
                write_json(a.json.as_deref(), &report)?;
                Ok(())
            }
            Suite::Polybench(a) => a.common.programs("polybench", a.size, |dir, progress| {
                polybench::build(dir, a.size, &a.kernels, progress)
            }),
            Suite::Compute(a) => a.common.programs("compute", a.size, |dir, progress| {
                polybench::build_compute(dir, a.size, &a.programs, progress)
            }),
            Suite::Migration(a) => {
                let tern = std::env::current_exe().context("locating the tern binary")?;
                let progress =
                    Progress::new(!a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()));
                let report = migration::run(
                    &MigrationOptions {
                        tern,
                        sizes: a.sizes,
                        runs: a.runs,
                        dataset: a.size,
                        link: !a.no_link,
                        tls: a.tls,
                    },
                    &progress,
                )?;
                println!("{}", machine_line());
                print!("{}", report.render());
                write_json(a.json.as_deref(), &report)?;
                if let Some(path) = a.plot {
                    migration::plot(&report, &path)?;
                    eprintln!("plot written to {}", path.display());
                }
                Ok(())
            }
            Suite::Cluster(a) => {
                let report = (!a.control_plane_only).then(|| {
                    eprintln!(
                        "placing {} apps on {} simulated nodes, {} times …",
                        a.apps, a.nodes, a.runs
                    );
                    cluster::run(&ClusterOptions {
                        nodes: a.nodes,
                        apps: a.apps,
                        sites: a.sites,
                        runs: a.runs,
                    })
                });
                let fleet = if a.placement_only {
                    None
                } else {
                    eprintln!(
                        "the whole control plane: nats-server and tern controller with {} simulated nodes …",
                        a.nodes
                    );
                    Some(tern_bench::fleet::run(
                        &tern_bench::fleet::FleetOptions {
                            tern: std::env::current_exe().context("locating tern")?,
                            nodes: a.nodes,
                            apps: a.apps,
                            kill: a.kill.min(a.nodes.saturating_sub(1)),
                            submitters: a.submitters,
                        },
                        &|line| eprintln!("  {line}"),
                    )?)
                };
                let live = if a.placement_only || a.control_plane_only {
                    None
                } else {
                    eprintln!(
                        "starting {} continuums (tern up) to kill a node under its app and migrate it …",
                        a.trials
                    );
                    Some(tern_bench::continuum::run(
                        &tern_bench::continuum::ContinuumOptions {
                            tern: std::env::current_exe().context("locating tern")?,
                            trials: a.trials,
                            migrations: a.migrations,
                        },
                        &Progress::new(
                            !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
                        ),
                    )?)
                };
                println!("{}", machine_line());
                if let Some(report) = &report {
                    print!("{}", report.render());
                }
                if let Some(fleet) = &fleet {
                    println!(
                        "\nthe whole control plane (a real nats-server and tern controller, simulated agents):\n"
                    );
                    print!("{}", fleet.render());
                }
                if let Some(live) = &live {
                    println!("\nthe continuum on this machine (tern up, emulated links):\n");
                    print!("{}", live.render());
                }
                #[derive(serde::Serialize)]
                struct All<'a> {
                    placement: Option<&'a cluster::ClusterReport>,
                    control_plane: Option<&'a tern_bench::fleet::FleetReport>,
                    continuum: Option<&'a tern_bench::continuum::ContinuumReport>,
                }
                write_json(
                    a.json.as_deref(),
                    &All {
                        placement: report.as_ref(),
                        control_plane: fleet.as_ref(),
                        continuum: live.as_ref(),
                    },
                )?;
                Ok(())
            }
            Suite::Durability(a) => {
                eprintln!("storing checkpoints on a synced and a default nats-server …");
                let report = tern_bench::durability::run(a.runs)?;
                println!("{}", machine_line());
                print!("{}", report.render());
                write_json(a.json.as_deref(), &report)?;
                Ok(())
            }
            Suite::Report(a) => {
                let text = std::fs::read_to_string(&a.json)
                    .with_context(|| format!("reading {}", a.json.display()))?;
                let report: SuiteReport = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "{} is not a saved polybench, compute or sqlite run",
                        a.json.display()
                    )
                })?;
                print!("{}", report.render());
                if let Some(path) = &a.plot {
                    tern_bench::plot::write(&report, path)?;
                }
                Ok(())
            }
            Suite::Sqlite(a) => {
                let progress = a.common.progress();
                eprintln!("sqlite: sources and builds in {}", a.sources.display());
                let sources = sqlite::obtain_sources(&a.sources)?;
                let program = sqlite::build(&sources, &progress)?;
                let scratch = tempfile::tempdir().context("creating a scratch directory")?;
                let (runners, skipped) = a.common.runners(scratch.path())?;
                let mut report = SuiteReport {
                    suite: "sqlite speedtest1".into(),
                    setting: format!("--size {}, {} runs, clang-19 -O2", a.size, a.common.runs),
                    runners: runners.iter().map(|r| r.name.clone()).collect(),
                    skipped,
                    ..SuiteReport::default()
                };
                let storages: &[Storage] = match a.storage.as_str() {
                    "memdb" => &[Storage::Memory],
                    "disk" => &[Storage::Disk],
                    _ => &[Storage::Memory, Storage::Disk],
                };
                for &storage in storages {
                    sqlite::measure(
                        &program,
                        &runners,
                        a.size,
                        storage,
                        &a.tests,
                        a.common.runs,
                        &mut report,
                        &progress,
                    )?;
                }
                a.common.finish(&report)
            }
        }
    }
}

/// Parses `--runs`: a whole number of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
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

/// Writes `report` as JSON to `path`, when one was given.
fn write_json(
    path: Option<&std::path::Path>,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
