//! `tern bench migration`: what checkpoints and live migration cost.
//!
//! - **Time to safe point**: PolyBench kernels run in process in migratable mode while a
//!   thread asks for a checkpoint every few milliseconds; each request's delay until the
//!   guest reaches a safe point is a sample (the guest then continues).
//! - **Overhead**: PolyBench kernels under plain `tern run` against migratable mode (a
//!   checkpoint asked for in an hour, so never taken), as time relative to native.
//! - **Snapshots and live migration** of the `workset` guest (a working set of 1 to
//!   256 MiB with a small hot set) between two real `tern` processes on loopback: snapshot
//!   size, downtime, total time, rounds and bytes, with the guest's result checked
//!   against an uninterrupted run; then the same through an emulated 100 Mbit/s link
//!   with 20 ms of one-way delay ([`crate::link`]); with `tls`, also through two nodes'
//!   TLS migration streams on loopback (`tern_cluster::tunnel`, as a continuum's nodes
//!   carry them), interleaved run by run with the plain ones.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tern_runtime::{Engine, EngineOptions, Limits, Outcome, Policy};
use tern_snapshot::{Checkpoint, Migratable, Rewriter, RunEnd, Trigger};

use crate::polybench::{self, Dataset};
use crate::progress::Progress;
use crate::report::SuiteReport;
use crate::runner::{Build, Runner};
use crate::stats::{Summary, geomean, human};
use crate::table::Table;
use crate::toolchain;
use tern_cluster::emulate::{Link, Shape};

const WORKSET_C: &str = include_str!("../../../guests/workset.c");
/// Rounds of the workset guest: about two seconds on this project's machines, so a
/// migration started after 300 ms finishes while it runs.
const WORKSET_ROUNDS: &str = "400000";
/// Rounds of the workset guest when it migrates through the emulated link, where a
/// migration takes seconds.
const WORKSET_ROUNDS_LINK: &str = "1600000";

/// The emulated link: 100 Mbit/s, 20 ms one way (40 ms round trip).
pub const LINK: Shape = Shape {
    rate: 100_000_000,
    delay: Duration::from_millis(20),
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// The `tern` binary.
    pub tern: PathBuf,
    /// Working-set sizes, MiB.
    pub sizes: Vec<u32>,
    /// Migrations per size, and PolyBench runs per kernel.
    pub runs: usize,
    /// PolyBench dataset for time to safe point and overhead.
    pub dataset: Dataset,
    /// Also migrate through the emulated link ([`LINK`]).
    pub link: bool,
    /// Also migrate through two nodes' TLS streams, interleaved with the plain runs.
    pub tls: bool,
}

/// One working-set size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    pub mib: u32,
    pub snapshot_bytes: u64,
    pub downtime: Summary,
    pub total: Summary,
    pub rounds: f64,
    pub kib_sent: f64,
}

/// Everything `tern bench migration` measured.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    pub time_to_safepoint: Summary,
    pub time_to_safepoint_p99: f64,
    pub safepoint_samples: Vec<f64>,
    pub overhead: SuiteReport,
    pub sizes: Vec<SizeRow>,
    /// The same migrations through the emulated link (empty when not measured).
    pub link_sizes: Vec<SizeRow>,
    /// The same migrations through two nodes' TLS streams (empty when not measured).
    pub tls_sizes: Vec<SizeRow>,
}

/// Runs the benchmark.
///
/// # Errors
/// A build failure, a runner failure, or a migrated guest whose result differs from an
/// uninterrupted run's.
pub fn run(opts: &MigrationOptions, progress: &Progress) -> anyhow::Result<MigrationReport> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let programs = polybench::build(scratch.path(), opts.dataset, &[], progress)?;
    let (samples, summary, p99) = time_to_safepoint(&programs, opts.runs, progress)?;

    let mut overhead = SuiteReport {
        suite: "migratable-mode overhead (polybench)".into(),
        setting: format!("{}, {} runs, clang-19 -O3", opts.dataset.name(), opts.runs),
        ..SuiteReport::default()
    };
    let never = scratch.path().join("never.snap");
    let runners = vec![
        Runner::native(),
        Runner::tern(&opts.tern, "cranelift", Build::Wasm),
        Runner::template(
            "migratable",
            &format!(
                "{} run --checkpoint-after 3600s --checkpoint-out {} {{wasm}} {{args}}",
                shell(&opts.tern),
                shell(&never)
            ),
            Build::Wasm,
        ),
    ];
    overhead.runners = runners.iter().map(|r| r.name.clone()).collect();
    polybench::measure(&programs, &runners, opts.runs, &mut overhead, progress)?;

    let workset = scratch.path().join("workset.wasm");
    let src = scratch.path().join("workset.c");
    std::fs::write(&src, WORKSET_C)?;
    toolchain::wasm(&src, &workset, &["-O2"])?;
    let per_size = 1 + usize::from(opts.link) + usize::from(opts.tls);
    let streams = if opts.tls {
        Some(Streams::new()?)
    } else {
        None
    };
    let bar = progress.bar(
        "migrating",
        (opts.sizes.len() * opts.runs * per_size) as u64,
    );
    let mut sizes = Vec::new();
    let mut link_sizes = Vec::new();
    let mut tls_sizes = Vec::new();
    for &mib in &opts.sizes {
        let args = [mib.to_string(), WORKSET_ROUNDS.to_owned()];
        let snap = scratch.path().join("w.snap");
        let _ = std::fs::remove_file(&snap);
        let snap_arg = snap.display().to_string();
        run_tern(
            &opts.tern,
            scratch.path(),
            &[
                "run",
                "--checkpoint-after",
                "300ms",
                "--checkpoint-out",
                &snap_arg,
            ],
            &workset,
            &args,
        )?;
        let snapshot_bytes = std::fs::metadata(&snap)
            .with_context(|| format!("the {mib} MiB workset ended before its checkpoint"))?
            .len();
        // On loopback, plain and (with --tls) through the nodes' streams, run by run.
        let mut ways = vec![Way::Plain];
        if let Some(s) = &streams {
            ways.push(Way::Streams(s));
        }
        let mut kinds = vec![(ways, WORKSET_ROUNDS)];
        if opts.link {
            kinds.push((vec![Way::Link(LINK)], WORKSET_ROUNDS_LINK));
        }
        for (ways, rounds) in kinds {
            let args = [mib.to_string(), rounds.to_owned()];
            let expected = run_tern(&opts.tern, scratch.path(), &["run"], &workset, &args)?;
            let rows = migrations(
                opts,
                scratch.path(),
                &workset,
                (mib, snapshot_bytes),
                &args,
                &expected,
                &ways,
                &bar,
            )?;
            for (way, row) in ways.iter().zip(rows) {
                match way {
                    Way::Plain => sizes.push(row),
                    Way::Link(_) => link_sizes.push(row),
                    Way::Streams(_) => tls_sizes.push(row),
                }
            }
        }
    }
    bar.finish();
    Ok(MigrationReport {
        time_to_safepoint: summary,
        time_to_safepoint_p99: p99,
        safepoint_samples: samples,
        overhead,
        sizes,
        link_sizes,
        tls_sizes,
    })
}

/// How a migration reaches its destination.
#[derive(Clone, Copy)]
pub(crate) enum Way<'a> {
    /// Straight to it, on loopback.
    Plain,
    /// Through an emulated link.
    Link(Shape),
    /// Through two nodes' TLS migration streams, on loopback.
    Streams(&'a Streams),
}

/// Two nodes' TLS identities, from a CA made for the benchmark, and the runtime their
/// streams run on.
pub(crate) struct Streams {
    runtime: tokio::runtime::Runtime,
    source: tern_trust::tls::NodeTls,
    destination: tern_trust::tls::NodeTls,
}

impl Streams {
    pub(crate) fn new() -> anyhow::Result<Streams> {
        let ca = tern_trust::tls::Ca::generate()?;
        let node = |name: &str| -> anyhow::Result<tern_trust::tls::NodeTls> {
            let (seed, key) = tern_trust::nats::new_user()?;
            let cert = ca.issue_node(name, &key)?;
            Ok(tern_trust::tls::NodeTls::new(&cert, &seed, ca.cert_pem())?)
        };
        Ok(Streams {
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?,
            source: node("source")?,
            destination: node("destination")?,
        })
    }

    /// The source's way in to the destination listening at `addr`: what the source
    /// connects to, and the two ends, which live until dropped.
    fn open(
        &self,
        addr: String,
    ) -> anyhow::Result<(
        String,
        tern_cluster::tunnel::Inbound,
        tern_cluster::tunnel::Outbound,
    )> {
        use tern_cluster::tunnel::{Inbound, Outbound};
        let inbound = self.runtime.block_on(Inbound::start(
            &self.destination,
            "127.0.0.1",
            "source",
            addr,
            "workset",
        ))?;
        let outbound = self.runtime.block_on(Outbound::start(
            &self.source,
            inbound.addr.clone(),
            "destination",
        ))?;
        Ok((outbound.addr.clone(), inbound, outbound))
    }
}

/// `opts.runs` migrations of the workset guest of `mib` MiB each way of `ways`, one
/// way after the other in each run, each checked against `expected`: a row per way.
#[allow(clippy::too_many_arguments)]
fn migrations(
    opts: &MigrationOptions,
    dir: &Path,
    workset: &Path,
    (mib, snapshot_bytes): (u32, u64),
    args: &[String],
    expected: &str,
    ways: &[Way<'_>],
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<SizeRow>> {
    let mut samples = vec![(vec![], vec![], vec![], vec![]); ways.len()];
    for _ in 0..opts.runs {
        for (way, (down, total, rounds, sent)) in ways.iter().zip(samples.iter_mut()) {
            let m = migrate_once(&opts.tern, dir, workset, args, *way)?;
            if m.output != expected {
                bail!(
                    "the {mib} MiB workset migrated gives {:?}, uninterrupted {:?}",
                    m.output,
                    expected
                );
            }
            down.push(m.downtime);
            total.push(m.total);
            rounds.push(m.rounds);
            sent.push(m.kib_sent);
            bar.inc(1);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    samples
        .into_iter()
        .map(|(down, total, rounds, sent)| {
            Ok(SizeRow {
                mib,
                snapshot_bytes,
                downtime: Summary::of(&down).context("no samples")?,
                total: Summary::of(&total).context("no samples")?,
                rounds: mean(&rounds),
                kib_sent: mean(&sent),
            })
        })
        .collect()
}

fn shell(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// Runs each kernel in process, migratable, while a thread asks for a checkpoint every
/// 2 to 5 ms; each request's delay to the safe point is a sample.
fn time_to_safepoint(
    programs: &[(String, crate::runner::Program)],
    runs: usize,
    progress: &Progress,
) -> anyhow::Result<(Vec<f64>, Summary, f64)> {
    let engine = Engine::new(EngineOptions::default())?;
    let cache = tempfile::tempdir()?;
    let rewriter = Rewriter::new(Some(cache.path().to_owned()));
    let bar = progress.bar("time to safe point", (programs.len() * runs) as u64);
    let mut all = Vec::new();
    for (name, p) in programs {
        let wasm = std::fs::read(&p.wasm)?;
        let m = Migratable::new(&engine, &rewriter, &wasm)
            .with_context(|| format!("making {name} migratable"))?;
        for _ in 0..runs {
            let trigger = Trigger::new();
            let done = Arc::new(AtomicBool::new(false));
            let firing = {
                let (t, done) = (trigger.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !done.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_micros(2000 + (i * 7919) % 3000));
                        t.fire();
                        i += 1;
                    }
                })
            };
            let policy = Policy {
                args: vec![name.clone()],
                ..Policy::default()
            };
            let end = m.run(&policy, &Limits::default(), &trigger, |_| {
                Checkpoint::Continue
            });
            done.store(true, Ordering::SeqCst);
            let _ = firing.join();
            match end? {
                RunEnd::Finished(Outcome::Exited(0)) => {}
                other => bail!("{name} in migratable mode ended with {other:?}"),
            }
            all.extend(trigger.latencies());
            bar.inc(1);
        }
    }
    bar.finish();
    let summary = Summary::of(&all).context("no checkpoint was requested while a kernel ran")?;
    let mut secs: Vec<f64> = all.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(f64::total_cmp);
    let p99 = secs[((secs.len() - 1) as f64 * 0.99).round() as usize];
    Ok((secs, summary, p99))
}

fn run_tern(
    tern: &Path,
    dir: &Path,
    pre: &[&str],
    wasm: &Path,
    args: &[String],
) -> anyhow::Result<String> {
    let out = Command::new(tern)
        .args(pre)
        .arg(wasm)
        .args(args)
        .env("TERN_CACHE_DIR", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .context("starting tern")?;
    if !out.status.success() {
        bail!(
            "tern {} failed: {}",
            pre.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) struct Migration {
    output: String,
    pub(crate) downtime: Duration,
    total: Duration,
    rounds: f64,
    kib_sent: f64,
}

/// One live migration between two `tern` processes on loopback, the `way` it says.
pub(crate) fn migrate_once(
    tern: &Path,
    dir: &Path,
    wasm: &Path,
    args: &[String],
    way: Way<'_>,
) -> anyhow::Result<Migration> {
    let mut receiver = Command::new(tern)
        .args(["receive", "--listen", "127.0.0.1:0"])
        .env("TERN_CACHE_DIR", dir.join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tern receive")?;
    let mut err = BufReader::new(receiver.stderr.take().context("receive's stderr")?);
    let mut line = String::new();
    err.read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("receive: listening on ")
        .with_context(|| format!("tern receive said {line:?}"))?
        .to_owned();
    // The relay or the streams live until the migration is measured.
    let relay = match way {
        Way::Link(shape) => Some(Link::start(addr.clone(), shape)?),
        _ => None,
    };
    let streams = match way {
        Way::Streams(s) => Some(s.open(addr.clone())?),
        _ => None,
    };
    let addr = match (&relay, &streams) {
        (Some(r), _) => r.addr.clone(),
        (_, Some((a, ..))) => a.clone(),
        _ => addr,
    };
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    });
    let source = Command::new(tern)
        .args(["run", "--migrate-to", &addr, "--migrate-after", "300ms"])
        .arg(wasm)
        .args(args)
        .env("TERN_CACHE_DIR", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .context("starting tern run")?;
    let dest = receiver.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&source.stderr);
    let stats = stderr
        .lines()
        .find(|l| l.starts_with("migrated to"))
        .with_context(|| format!("the migration did not happen: {}", stderr.trim()))?;
    let field = |key: &str| -> anyhow::Result<f64> {
        stats
            .split(", ")
            .find_map(|part| part.strip_suffix(key)?.rsplit(' ').next()?.parse().ok())
            .with_context(|| format!("no `{key}` in {stats:?}"))
    };
    Ok(Migration {
        output: String::from_utf8_lossy(&source.stdout).into_owned()
            + &String::from_utf8_lossy(&dest.stdout),
        downtime: Duration::from_secs_f64(field(" ms")? / 1e3),
        total: Duration::from_secs_f64(field(" ms in all")? / 1e3),
        rounds: field(" rounds")?,
        kib_sent: field(" KiB sent")?,
    })
}

impl MigrationReport {
    /// The tables, as Markdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let t = &self.time_to_safepoint;
        out.push_str(&format!(
            "time to safe point ({} requests): median {}, p90 {}, p99 {}, max {}\n\n",
            t.n,
            human(t.median),
            human(t.p90),
            human(self.time_to_safepoint_p99),
            human(self.safepoint_samples.last().copied().unwrap_or(0.0)),
        ));
        out.push_str(&self.overhead.render());
        if let Some(g) = self.overhead_ratio() {
            out.push_str(&format!(
                "\nmigratable-mode overhead: {:.1} % (geomean of migratable / tern per kernel)\n\n",
                (g - 1.0) * 100.0
            ));
        }
        out.push_str("live migration on loopback (workset guest):\n\n");
        out.push_str(&size_table(&self.sizes));
        if !self.link_sizes.is_empty() {
            out.push_str(&format!(
                "\nlive migration through an emulated {} Mbit/s link, {} ms one way (workset guest):\n\n",
                LINK.rate / 1_000_000,
                LINK.delay.as_millis()
            ));
            out.push_str(&size_table(&self.link_sizes));
        }
        if !self.tls_sizes.is_empty() {
            out.push_str(
                "\nlive migration on loopback through two nodes' TLS migration streams, interleaved run by run with the plain ones above (workset guest):\n\n",
            );
            out.push_str(&size_table(&self.tls_sizes));
            for (tls, plain) in self.tls_sizes.iter().zip(&self.sizes) {
                out.push_str(&format!(
                    "\n{} MiB: downtime {:.2}×, total {:.2}× plain",
                    tls.mib,
                    tls.downtime.median / plain.downtime.median.max(f64::MIN_POSITIVE),
                    tls.total.median / plain.total.median.max(f64::MIN_POSITIVE),
                ));
            }
            out.push('\n');
        }
        out
    }

    /// Geomean over kernels of migratable time / plain Tern time.
    pub fn overhead_ratio(&self) -> Option<f64> {
        let ratios: Vec<f64> = self
            .overhead
            .items
            .iter()
            .filter_map(|k| {
                let t = self.overhead.ratio(k, "tern")?;
                let m = self.overhead.ratio(k, "migratable")?;
                Some(m / t)
            })
            .collect();
        geomean(&ratios)
    }
}

fn size_table(rows: &[SizeRow]) -> String {
    let mut table = Table::new(&[
        "working set",
        "snapshot",
        "downtime (median)",
        "downtime p90",
        "total (median)",
        "rounds",
        "sent",
    ]);
    for r in rows {
        table.row(vec![
            format!("{} MiB", r.mib),
            format!("{:.1} MiB", r.snapshot_bytes as f64 / (1 << 20) as f64),
            human(r.downtime.median),
            human(r.downtime.p90),
            human(r.total.median),
            format!("{:.1}", r.rounds),
            format!("{:.1} MiB", r.kib_sent / 1024.0),
        ]);
    }
    table.markdown()
}

/// Draws downtime and total migration time (medians) against working-set size to `path`
/// (`.svg`) and the same path with `.png`.
///
/// # Errors
/// No sizes measured, no font, or a file that cannot be written.
pub fn plot(report: &MigrationReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    crate::plot::font()?;
    if report.sizes.is_empty() {
        bail!("nothing to plot: no working-set size was measured");
    }
    fn draw<DB: DrawingBackend>(
        report: &MigrationReport,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let ms = |s: f64| s * 1e3;
        let max_x = report.sizes.iter().map(|r| r.mib).max().unwrap_or(1) as f64;
        let max_y = report
            .sizes
            .iter()
            .chain(&report.link_sizes)
            .map(|r| ms(r.total.median).max(ms(r.downtime.p90)))
            .fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Live migration: time against working set",
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (0.8f64..max_x * 1.25).log_scale(),
                (0.5f64..max_y * 2.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("working set (MiB)")
            .x_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc("milliseconds")
            .label_style(("sans-serif", 13))
            .draw()?;
        let line = |rows: &[SizeRow], total: bool| -> Vec<(f64, f64)> {
            rows.iter()
                .map(|r| {
                    let s = if total { &r.total } else { &r.downtime };
                    (r.mib as f64, ms(s.median))
                })
                .collect()
        };
        let mut series = vec![
            ("downtime, loopback", RED, line(&report.sizes, false)),
            ("total time, loopback", BLUE, line(&report.sizes, true)),
        ];
        if !report.link_sizes.is_empty() {
            let orange = RGBColor(230, 120, 0);
            let green = RGBColor(0, 140, 70);
            series.push((
                "downtime, 100 Mbit/s 20 ms link",
                orange,
                line(&report.link_sizes, false),
            ));
            series.push((
                "total time, 100 Mbit/s 20 ms link",
                green,
                line(&report.link_sizes, true),
            ));
        }
        for (name, color, points) in series {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
    let svg = path.with_extension("svg");
    let png = path.with_extension("png");
    draw(
        report,
        SVGBackend::new(&svg, (800, 500)).into_drawing_area(),
    )
    .with_context(|| format!("drawing {}", svg.display()))?;
    draw(
        report,
        BitMapBackend::new(&png, (800, 500)).into_drawing_area(),
    )
    .with_context(|| format!("drawing {}", png.display()))?;
    Ok(())
}
