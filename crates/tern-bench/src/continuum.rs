//! The live part of `tern bench cluster`: a real continuum (`tern up`: nats-server,
//! the control plane and three `tern node` processes, with emulated links between the
//! sites), driven through the same verbs a user types.
//!
//! - **Recovery:** a migratable app checkpointed every second runs on a node that hangs
//!   (SIGSTOP: a machine that froze or was cut off; a node process that merely exited
//!   is started again by `tern up`); the time until `tern ps` shows the app running on
//!   another node. The hung node is then killed.
//! - **Migration through the control plane:** `tern migrate` of the workset guest
//!   between the cloud and the edge node (20 ms round trip, 100 Mbit/s), its downtime
//!   and the verb's whole time, against `tern run --migrate-to` of the same guest over
//!   the same emulated link, without a continuum.
//! - **Memory:** the resident set of each idle node agent and of `tern up` (the control
//!   plane and API), and of nats-server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::Value;

use crate::stats::{Summary, human};
use crate::table::Table;
use crate::toolchain;

const WORKSET_C: &str = include_str!("../../../guests/workset.c");

/// What to measure.
#[derive(Debug, Clone)]
pub struct ContinuumOptions {
    /// The `tern` binary.
    pub tern: PathBuf,
    /// Continuums started, each with one node killed.
    pub trials: usize,
    /// Migrations through the control plane (and direct ones) per trial.
    pub migrations: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct ContinuumReport {
    /// From the SIGSTOP of the app's node to the app running elsewhere.
    pub recovery: Summary,
    /// Downtime of `tern migrate` (cloud ↔ edge, emulated link).
    pub migrate_downtime: Summary,
    /// The whole `tern migrate` verb, as the user waits for it.
    pub migrate_verb: Summary,
    /// Downtime of `tern run --migrate-to` over the same emulated link.
    pub direct_downtime: Summary,
    /// Resident set of each idle node agent, KiB.
    pub agent_rss_kib: Vec<u64>,
    /// Resident set of the idle `tern up` process (control plane and API), KiB.
    pub control_rss_kib: u64,
    pub nats_rss_kib: u64,
    /// Round trips the nodes measured over each emulated link, on the idle continuum
    /// and with one core kept busy.
    pub rtt: Vec<RttRow>,
}

/// One emulated link: its round trip and what the nodes measured over it.
#[derive(Debug, Clone, Serialize)]
pub struct RttRow {
    pub link: String,
    pub emulated_ms: f64,
    pub quiet_ms: f64,
    pub busy_ms: f64,
}

/// Long enough for the nodes' round-trip windows to hold only fresh samples (20
/// samples, one each 500 ms).
const RTT_WINDOW: Duration = Duration::from_secs(12);

/// The round trip each emulated link of `tern up`'s continuum shows in `tern nodes
/// --json`: the larger of its two ends' measurements, by link.
fn rtt_of_links(up: &Up) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let nodes = up.json(&["nodes", "--json"])?;
    let config = tern_cluster::up::ContinuumConfig::default();
    let mut rows = Vec::new();
    for l in &config.links {
        let [a, b] = &l.sites;
        let seen = |from: &str, to: &str| {
            nodes
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["site"] == from))
                .and_then(|n| {
                    // Keyed by the other node's name, which `tern up` gives its site.
                    n["rtt_ms"][to].as_f64()
                })
        };
        let measured = seen(a, b)
            .into_iter()
            .chain(seen(b, a))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
            .with_context(|| format!("no round trip measured between {a} and {b}"))?;
        rows.push((format!("{a} ↔ {b}"), l.shape.rtt_ms(), measured));
    }
    Ok(rows)
}

/// A process that keeps one core busy, killed when dropped.
struct Busy(Child);

impl Busy {
    fn start() -> anyhow::Result<Busy> {
        Ok(Busy(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .context("starting a busy loop")?,
        ))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `tern up` of the benchmark, stopped when dropped.
/// Sends `sig` to process `pid` with the shell's `kill` (a minimal machine has no
/// `/bin/kill`).
fn signal(pid: u32, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill {sig} {pid}"))
        .status()
}

struct Up {
    child: Child,
    tern: PathBuf,
    state: PathBuf,
    api: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "-INT");
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn start(tern: &Path, dir: &Path) -> anyhow::Result<Up> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        drop(listener);
        let state = dir.join("state");
        let child = Command::new(tern)
            .args(["up", "--listen", &addr, "--state"])
            .arg(&state)
            .env("TERN_CACHE_DIR", dir.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tern up")?;
        let up = Up {
            child,
            tern: tern.to_path_buf(),
            state,
            api: format!("http://{addr}"),
        };
        up.wait("three nodes", Duration::from_secs(90), || {
            Ok(up
                .json(&["nodes", "--json"])?
                .as_array()
                .map_or(0, Vec::len)
                == 3)
        })?;
        Ok(up)
    }

    /// `tern ARGS --api …` with the continuum's token; its stdout as JSON.
    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.verb(args)?;
        serde_json::from_str(&out).with_context(|| format!("tern {args:?} said {out:?}"))
    }

    fn verb(&self, args: &[&str]) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(self.state.join("api/token")).unwrap_or_default();
        let out = Command::new(&self.tern)
            .args(args)
            .args(["--api", &self.api])
            .env("TERN_TOKEN", token.trim())
            .stdin(Stdio::null())
            .output()
            .context("running tern")?;
        if !out.status.success() {
            bail!(
                "tern {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn wait(
        &self,
        what: &str,
        within: Duration,
        mut done: impl FnMut() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            match done() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match last {
            Some(e) => bail!("waited {within:?} for {what}; last: {e:#}"),
            None => bail!("waited {within:?} for {what}"),
        }
    }

    fn app(&self, name: &str) -> anyhow::Result<Value> {
        let apps = self.json(&["ps", "--json"])?;
        apps.as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name).cloned())
            .with_context(|| format!("{name} is not listed"))
    }

    /// The pids of this continuum's node processes, by name.
    fn nodes(&self) -> Vec<(String, u32)> {
        let state = self.state.display().to_string();
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let words: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            if words.get(1).map(String::as_str) != Some("node")
                || !words.iter().any(|w| w.starts_with(&state))
            {
                continue;
            }
            let name = words
                .windows(2)
                .find(|w| w[0] == "--name")
                .map(|w| w[1].clone());
            if let (Some(name), Ok(pid)) = (name, entry.file_name().to_string_lossy().parse()) {
                out.push((name, pid));
            }
        }
        out.sort();
        out
    }
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Runs the benchmark.
///
/// # Errors
/// A continuum that does not come up, a verb that fails, a guest that cannot be built.
pub fn run(
    o: &ContinuumOptions,
    progress: &crate::progress::Progress,
) -> anyhow::Result<ContinuumReport> {
    let scratch = tempfile::tempdir()?;
    let src = scratch.path().join("workset.c");
    std::fs::write(&src, WORKSET_C)?;
    let workset = scratch.path().join("workset.wasm");
    toolchain::wasm(&src, &workset, &["-O2"])?;
    let bar = progress.bar(
        "continuum: recovery and migrations",
        (o.trials * (2 * o.migrations + 2)) as u64,
    );
    let (mut recovery, mut downtime, mut verb, mut direct) = (vec![], vec![], vec![], vec![]);
    let mut agent_rss = Vec::new();
    let (mut control_rss, mut nats_rss) = (0, 0);
    let mut rtt = Vec::new();
    // Long enough to outlive every migration and the kill.
    let args = ["16", "4000000000"];
    for trial in 0..o.trials {
        let dir = scratch.path().join(format!("trial-{trial}"));
        std::fs::create_dir_all(&dir)?;
        let up = Up::start(&o.tern, &dir)?;
        // Idle: nothing deployed yet.
        std::thread::sleep(Duration::from_secs(3));
        if trial == 0 {
            // Round trips over the emulated links, quiet and with a core kept busy.
            std::thread::sleep(RTT_WINDOW);
            let quiet = rtt_of_links(&up)?;
            let busy = {
                let _busy = Busy::start()?;
                std::thread::sleep(RTT_WINDOW);
                rtt_of_links(&up)?
            };
            rtt = quiet
                .into_iter()
                .zip(busy)
                .map(|((link, emulated_ms, quiet_ms), (_, _, busy_ms))| RttRow {
                    link,
                    emulated_ms,
                    quiet_ms,
                    busy_ms,
                })
                .collect();
            agent_rss = up.nodes().iter().map(|(_, pid)| rss_kib(*pid)).collect();
            control_rss = rss_kib(up.child.id());
            nats_rss = std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.contains("nats-server") && c.contains(&up.state.display().to_string())
                    })
                })
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .map(rss_kib)
                .sum();
        }
        let manifest = dir.join("workset.toml");
        std::fs::copy(&workset, dir.join("workset.wasm"))?;
        std::fs::write(
            &manifest,
            format!(
                "name = \"workset\"\nmodule = \"workset.wasm\"\nargs = {args:?}\nmigratable = true\ncheckpoint_every = \"1s\"\n[constraints]\ntier = [\"cloud\", \"edge\"]\n"
            ),
        )?;
        up.verb(&["deploy", &manifest.display().to_string()])?;
        up.wait("workset running", Duration::from_secs(60), || {
            Ok(up.app("workset")?["state"] == "running")
        })?;
        for _ in 0..o.migrations {
            let at = up.app("workset")?["node"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let to = if at == "cloud" { "edge" } else { "cloud" };
            let started = Instant::now();
            let moved = up.json(&["migrate", "workset", "--to", to, "--json", "--wait"])?;
            verb.push(started.elapsed());
            let ms = moved["stats"]["downtime_ms"]
                .as_f64()
                .context("no downtime in tern migrate --wait's answer")?;
            downtime.push(Duration::from_secs_f64(ms / 1e3));
            bar.inc(1);
            up.wait(
                "workset running after its move",
                Duration::from_secs(30),
                || Ok(up.app("workset")?["state"] == "running"),
            )?;
        }
        up.wait("a checkpoint", Duration::from_secs(30), || {
            Ok(up.app("workset")?["checkpoint_age_s"].is_number())
        })?;
        let at = up.app("workset")?["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let pid = up
            .nodes()
            .into_iter()
            .find(|(n, _)| *n == at)
            .map(|(_, p)| p)
            .with_context(|| format!("no process of node {at}"))?;
        let killed = Instant::now();
        signal(pid, "-STOP")?;
        let moved = up.wait("workset running elsewhere", Duration::from_secs(60), || {
            let a = up.app("workset")?;
            Ok(a["state"] == "running" && a["node"] != at.as_str())
        });
        let recovered = killed.elapsed();
        signal(pid, "-KILL")?;
        moved?;
        recovery.push(recovered);
        bar.inc(1);
        drop(up);
        for _ in 0..o.migrations {
            let m = crate::migration::migrate_once(
                &o.tern,
                &dir,
                &workset,
                &["16".to_owned(), "1600000".to_owned()],
                crate::migration::Way::Link(tern_cluster::emulate::Shape::of_rtt(20.0, 100.0)),
            )?;
            direct.push(m.downtime);
            bar.inc(1);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let summary = |v: &[Duration]| Summary::of(v).context("no samples");
    Ok(ContinuumReport {
        recovery: summary(&recovery)?,
        migrate_downtime: summary(&downtime)?,
        migrate_verb: summary(&verb)?,
        direct_downtime: summary(&direct)?,
        agent_rss_kib: agent_rss,
        control_rss_kib: control_rss,
        nats_rss_kib: nats_rss,
        rtt,
    })
}

impl ContinuumReport {
    /// The table, as Markdown.
    pub fn render(&self) -> String {
        let mut t = Table::new(&["measurement", "median", "p90", "target"]);
        t.row(vec![
            format!(
                "a node hangs (SIGSTOP) → its app running elsewhere ({} trials)",
                self.recovery.n
            ),
            human(self.recovery.median),
            human(self.recovery.p90),
            "≤ 5 s".into(),
        ]);
        t.row(vec![
            "downtime, `tern migrate` cloud ↔ edge (20 ms, 100 Mbit/s)".into(),
            human(self.migrate_downtime.median),
            human(self.migrate_downtime.p90),
            String::new(),
        ]);
        t.row(vec![
            "downtime, `tern run --migrate-to` over the same link".into(),
            human(self.direct_downtime.median),
            human(self.direct_downtime.p90),
            String::new(),
        ]);
        t.row(vec![
            "`tern migrate`, the whole verb".into(),
            human(self.migrate_verb.median),
            human(self.migrate_verb.p90),
            String::new(),
        ]);
        let agents: Vec<String> = self
            .agent_rss_kib
            .iter()
            .map(|k| format!("{:.1}", *k as f64 / 1024.0))
            .collect();
        t.row(vec![
            "idle node agent RSS (cloud, edge, iot)".into(),
            format!("{} MiB", agents.join(" / ")),
            String::new(),
            "≤ 20 MiB".into(),
        ]);
        t.row(vec![
            "idle control plane RSS (`tern up`)".into(),
            format!("{:.1} MiB", self.control_rss_kib as f64 / 1024.0),
            String::new(),
            String::new(),
        ]);
        t.row(vec![
            "nats-server RSS".into(),
            format!("{:.1} MiB", self.nats_rss_kib as f64 / 1024.0),
            String::new(),
            String::new(),
        ]);
        let mut r = Table::new(&[
            "emulated link",
            "round trip",
            "measured, quiet",
            "measured, one core busy",
            "target",
        ]);
        let error = |m: f64, e: f64| format!("{m:.2} ms ({:+.1} %)", (m / e - 1.0) * 100.0);
        for row in &self.rtt {
            r.row(vec![
                row.link.clone(),
                format!("{:.0} ms", row.emulated_ms),
                error(row.quiet_ms, row.emulated_ms),
                error(row.busy_ms, row.emulated_ms),
                "within 10 %".into(),
            ]);
        }
        format!("{}\n{}", t.markdown(), r.markdown())
    }
}
