//! The whole control plane under a large continuum: a real nats-server (syncing every
//! write, as Tern runs it) and a real `tern controller` process, with simulated node
//! agents in this process.
//!
//! Each simulated agent has a connection of its own, registers a descriptor, and says it
//! is alive every [`HEARTBEAT`] on `tern.alive.NODE`, as `tern node` does. Deployments go
//! through the controller's HTTP API (`POST /v1/apps`, several at once, as many users
//! would), and when an app's record names a simulated node, that node reports the app
//! running on its own connection. What an agent does between (fetching, compiling and
//! running the module) is not simulated: the figures are the control plane's.
//!
//! Measured:
//! - **Placement:** from the first deployment submitted to the last one answered (each
//!   answer names its node), and to every app reported running.
//! - **Failover:** `kill` nodes go silent at once; from then until every app they held
//!   runs on another node (reported running there, in a new incarnation). This includes
//!   the controller's `--lost-after` (4 s by default).
//! - **Cost:** CPU time and resident set of the controller and of nats-server over
//!   each phase.
//!
//! Simplification, said where the figures are printed: the simulated agents share one
//! watch of the deployments, where each real agent holds its own.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use serde::Serialize;
use tern_cluster::apps::{AppEvent, InstanceStatus, now_ms};
use tern_cluster::backbone::{Backbone, HEARTBEAT, LOST_AFTER, NatsServer};
use tern_cluster::model::Heartbeat;
use tern_cluster::{InstanceState, NodeDescriptor, NodeLoad, Tee, Tier};
use tern_runtime::EngineKind;

use crate::stats::human;
use crate::table::Table;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The `tern` binary (its `controller` is measured).
    pub tern: PathBuf,
    pub nodes: usize,
    pub apps: usize,
    /// Nodes that go silent at once in the failover phase.
    pub kill: usize,
    /// Deployments in flight at once.
    pub submitters: usize,
}

/// CPU and memory of one process over the phases.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cost {
    /// CPU seconds (user + system) while the nodes joined and idled, during the
    /// placement wave, and during the failover.
    pub cpu_join_s: f64,
    pub cpu_wave_s: f64,
    pub cpu_failover_s: f64,
    /// CPU seconds over 10 s of the idle continuum (heartbeats only), after the wave.
    pub cpu_idle_10s: f64,
    /// Resident set at the end, and its peak, KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub nodes: usize,
    pub apps: usize,
    pub killed: usize,
    pub submitters: usize,
    /// From the first agent started to every node listed by the API.
    pub join_s: f64,
    /// From the first deployment submitted to the last one answered, placed.
    pub placed_s: f64,
    /// From the first deployment submitted to every app reported running.
    pub running_s: f64,
    /// Apps the killed nodes held.
    pub orphans: usize,
    /// From the nodes' silence to every orphan running elsewhere.
    pub failover_s: f64,
    /// The controller's silence limit, included in `failover_s`.
    pub lost_after_s: f64,
    pub controller: Cost,
    pub nats: Cost,
}

impl FleetReport {
    pub fn render(&self) -> String {
        let mut t = Table::new(&["the control plane", "measured"]);
        t.row(vec![
            format!("{} nodes joined (listed by the API)", self.nodes),
            human(self.join_s),
        ]);
        t.row(vec![
            format!(
                "{} deployments submitted → all placed ({} at once)",
                self.apps, self.submitters
            ),
            format!(
                "{} ({:.0} /s)",
                human(self.placed_s),
                self.apps as f64 / self.placed_s
            ),
        ]);
        t.row(vec![
            format!("{} deployments submitted → all running", self.apps),
            human(self.running_s),
        ]);
        t.row(vec![
            format!(
                "{} nodes silent → their {} apps running elsewhere",
                self.killed, self.orphans
            ),
            format!(
                "{} (of which {} is --lost-after)",
                human(self.failover_s),
                human(self.lost_after_s)
            ),
        ]);
        let mut c = Table::new(&[
            "process",
            "CPU: join",
            "CPU: wave",
            "CPU: failover",
            "CPU: 10 s idle",
            "RSS (peak)",
        ]);
        for (name, cost) in [
            ("controller", &self.controller),
            ("nats-server", &self.nats),
        ] {
            c.row(vec![
                name.to_owned(),
                format!("{:.1} s", cost.cpu_join_s),
                format!("{:.1} s", cost.cpu_wave_s),
                format!("{:.1} s", cost.cpu_failover_s),
                format!("{:.2} s", cost.cpu_idle_10s),
                format!(
                    "{} MiB ({} MiB)",
                    cost.rss_kib / 1024,
                    cost.peak_rss_kib / 1024
                ),
            ]);
        }
        format!(
            "{}\n{}\n(simulated agents report an app running as soon as its record names them, and share one watch of the deployments)\n",
            t.markdown(),
            c.markdown()
        )
    }
}

/// A module every deployment names: `(module (func (export "_start")))`, small, so
/// that the figures are the control plane's and not the module store's.
const MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x03, 0x02, 0x01, 0x00, // one function of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // its body
];

/// CPU seconds (user + system) `pid` has used; `/proc` counts in USER_HZ, which Linux
/// fixes at 100.
fn cpu_s(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / 100.0)
        })
        .unwrap_or(0.0)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn descriptor(i: usize) -> NodeDescriptor {
    let tier = Tier::ALL[i % 3];
    let (cores, memory, compute) = match tier {
        Tier::Cloud => (32, 64u64 << 30, 2000.0),
        Tier::Edge => (4, 4 << 30, 300.0),
        Tier::Iot => (1, 1 << 30, 10.0),
    };
    NodeDescriptor {
        name: node_name(i),
        arch: std::env::consts::ARCH.to_owned(),
        tier,
        engine: EngineKind::Cranelift,
        cores,
        memory,
        site: format!("site-{}", i % 20),
        labels: Default::default(),
        tee: Tee::None,
        compute_score: compute + (i % 7) as f64,
        load: NodeLoad::default(),
        link: None,
        rtt_ms: Default::default(),
    }
}

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

fn manifest(i: usize) -> String {
    let constraint = match i % 3 {
        1 => "\n[constraints]\ntier = \"edge\"\n",
        2 => "\n[constraints]\ntier = [\"cloud\", \"edge\"]\n",
        _ => "",
    };
    format!(
        "name = \"app-{i:05}\"\nmodule = \"app.wasm\"\n\n[limits]\nmemory = \"16MiB\"\n{constraint}"
    )
}

/// The apps' records as the simulated agents see them, and what they reported.
#[derive(Default)]
struct Seen {
    /// App → (node, incarnation) of its record.
    placed: HashMap<String, (String, u64)>,
    /// App → (node, incarnation) reported running.
    running: HashMap<String, (String, u64)>,
}

impl Seen {
    /// Whether every app of `apps` runs where its record places it, on none of `dead`.
    fn all_running(&self, apps: &HashSet<String>, dead: &HashSet<String>) -> bool {
        apps.iter()
            .all(|a| match (self.placed.get(a), self.running.get(a)) {
                (Some(p), Some(r)) => p == r && !dead.contains(&p.0),
                _ => false,
            })
    }
}

/// One simulated agent: registers, then beats until `alive` is lowered; reports the apps
/// it is told of running.
async fn agent(
    backbone: Backbone,
    i: usize,
    alive: Arc<AtomicBool>,
    mut told: tokio::sync::mpsc::UnboundedReceiver<(String, u64)>,
    seen: Arc<Mutex<Seen>>,
) {
    let name = node_name(i);
    while backbone.register(&descriptor(i)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                if !alive.load(Ordering::SeqCst) {
                    return;
                }
                let _ = backbone.beat(&Heartbeat { name: name.clone(), ..Heartbeat::default() }).await;
            }
            Some((app, incarnation)) = told.recv() => {
                if !alive.load(Ordering::SeqCst) {
                    return;
                }
                let status = InstanceStatus {
                    app: app.clone(),
                    node: name.clone(),
                    incarnation,
                    state: InstanceState::Running,
                    restarts: 0,
                    checkpoint: None,
                    note: String::new(),
                    updated_ms: now_ms(),
                };
                // Retried as a real agent retries its statuses.
                while backbone.put_status(&status).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Ok(mut s) = seen.lock() {
                    s.running.insert(app, (name.clone(), incarnation));
                }
            }
        }
    }
}

/// The controller under test, killed when dropped.
struct Controller {
    child: Child,
    api: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits up to `within` for `done`, checking every 50 ms.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", within.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the benchmark, saying what it does on `progress`.
///
/// # Errors
/// When nats-server or the controller cannot be started, or a phase does not complete
/// within its deadline (the error says which).
pub fn run(o: &FleetOptions, progress: &dyn Fn(&str)) -> anyhow::Result<FleetReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(fleet(o, progress))
}

async fn fleet(o: &FleetOptions, progress: &dyn Fn(&str)) -> anyhow::Result<FleetReport> {
    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("controller.log");
    let r = measure(o, progress, dir.path()).await;
    r.map_err(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        // A panic's own lines, else the last ones.
        let from = lines
            .iter()
            .position(|l| l.contains("panicked at"))
            .unwrap_or(lines.len().saturating_sub(10));
        let tail = lines[from..lines.len().min(from + 10)].join("\n");
        e.context(format!("the controller's last words:\n{tail}"))
    })
}

/// The API token of the bench's controller.
const BENCH_TOKEN: &str = "the-fleet-bench-token";

async fn measure(
    o: &FleetOptions,
    progress: &dyn Fn(&str),
    dir: &std::path::Path,
) -> anyhow::Result<FleetReport> {
    let server = NatsServer::start(&dir.join("nats"), 0).await?;
    let nats_pid = server.pid().context("nats-server has no pid")?;
    let bench = server.backbone().await?;
    let port = free_port()?;
    let log = std::fs::File::create(dir.join("controller.log"))?;
    let controller = Controller {
        child: Command::new(&o.tern)
            .args(["controller", "--nats", server.url(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("TERN_CREDS", server.control_credentials_file())
            .env("TERN_CA", server.ca_file())
            .env("TERN_TOKEN", BENCH_TOKEN)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tern controller")?,
        api: format!("http://127.0.0.1:{port}"),
    };
    let ctl_pid = controller.child.id();
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let token = BENCH_TOKEN.to_owned();
    let get_nodes = {
        let (http, api, token) = (http.clone(), controller.api.clone(), token.clone());
        move || -> Option<usize> {
            let mut r = http
                .get(format!("{api}/v1/nodes"))
                .header("Authorization", format!("Bearer {token}"))
                .call()
                .ok()?;
            let v: serde_json::Value = r.body_mut().read_json().ok()?;
            v.as_array().map(Vec::len)
        }
    };
    let cost_at = || (cpu_s(ctl_pid), cpu_s(nats_pid));

    // The nodes join.
    progress(&format!("{} simulated nodes join …", o.nodes));
    let join_started = Instant::now();
    let cpu0 = cost_at();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut alive = Vec::with_capacity(o.nodes);
    let mut tell = HashMap::with_capacity(o.nodes);
    // Connections are made a few at a time: a thousand at once is a reconnect storm.
    let connect = Arc::new(tokio::sync::Semaphore::new(32));
    for i in 0..o.nodes {
        let flag = Arc::new(AtomicBool::new(true));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        alive.push(flag.clone());
        tell.insert(node_name(i), tx);
        // Each node has credentials of its own, with its rights only, as a real one.
        let login = tern_cluster::backbone::Login {
            creds: Some(std::fs::read_to_string(
                server.node_credentials(&node_name(i))?,
            )?),
            ca: Some(server.ca_file()),
        };
        let (url, seen, connect) = (server.url().to_owned(), seen.clone(), connect.clone());
        tokio::spawn(async move {
            let backbone = {
                let _slot = connect.acquire().await;
                loop {
                    match Backbone::join_as_node(&url, &login, &node_name(i)).await {
                        Ok(b) => break b,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            };
            agent(backbone, i, flag, rx, seen).await;
        });
    }
    let nodes = o.nodes;
    let listed = {
        let get_nodes = get_nodes.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if get_nodes() == Some(nodes) {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await?
    };
    if !listed {
        bail!(
            "the API did not list {} nodes within 300 s (it lists {:?})",
            o.nodes,
            get_nodes()
        );
    }
    let join_s = join_started.elapsed().as_secs_f64();
    let cpu1 = cost_at();

    // The agents' shared watch of the deployments: each record that names a node is
    // told to that node, once per incarnation.
    {
        let (seen, bench) = (seen.clone(), bench.clone());
        tokio::spawn(async move {
            let Ok(mut watch) = bench.watch_apps().await else {
                return;
            };
            let mut told: HashSet<(String, u64)> = HashSet::new();
            while let Some(Ok(AppEvent::Put(record, _))) = watch.next().await {
                let Some(node) = record.node.clone() else {
                    continue;
                };
                if let Ok(mut s) = seen.lock() {
                    s.placed
                        .insert(record.name.clone(), (node.clone(), record.incarnation));
                }
                if told.insert((record.name.clone(), record.incarnation))
                    && let Some(tx) = tell.get(&node)
                {
                    let _ = tx.send((record.name.clone(), record.incarnation));
                }
            }
        });
    }

    // The wave.
    let digest = bench.put_module(MODULE).await?;
    progress(&format!(
        "{} deployments through the API, {} at once …",
        o.apps, o.submitters
    ));
    let wave_started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut submitters = Vec::new();
    for _ in 0..o.submitters.max(1) {
        let (http, api, token, digest, next, failures, apps) = (
            http.clone(),
            controller.api.clone(),
            token.clone(),
            digest.clone(),
            next.clone(),
            failures.clone(),
            o.apps,
        );
        submitters.push(tokio::task::spawn_blocking(move || {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= apps {
                    return;
                }
                let body = serde_json::json!({ "manifest": manifest(i), "module": digest });
                let answer = http
                    .post(format!("{api}/v1/apps"))
                    .header("Authorization", format!("Bearer {token}"))
                    .send_json(&body);
                match answer {
                    Ok(r) if r.status() == 201 => {}
                    Ok(mut r) => {
                        let text = r.body_mut().read_to_string().unwrap_or_default();
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("app-{i:05}: {} {text}", r.status()));
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("app-{i:05}: {e}"));
                        }
                    }
                }
            }
        }));
    }
    for s in submitters {
        s.await?;
    }
    let placed_s = wave_started.elapsed().as_secs_f64();
    let failed = failures.lock().map(|f| f.clone()).unwrap_or_default();
    if !failed.is_empty() {
        bail!(
            "{} of {} deployments failed, the first: {}",
            failed.len(),
            o.apps,
            failed[0]
        );
    }
    let all: HashSet<String> = (0..o.apps).map(|i| format!("app-{i:05}")).collect();
    let none = HashSet::new();
    until(
        "every app reported running",
        Duration::from_secs(300),
        || seen.lock().is_ok_and(|s| s.all_running(&all, &none)),
    )
    .await?;
    let running_s = wave_started.elapsed().as_secs_f64();
    let cpu2 = cost_at();
    progress("the continuum idles for 10 s …");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu3 = cost_at();

    // The failover: the nodes holding the most apps go silent.
    let (dead, orphans) = {
        let s = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut held: HashMap<&str, usize> = HashMap::new();
        for (node, _) in s.placed.values() {
            *held.entry(node.as_str()).or_default() += 1;
        }
        let mut by_load: Vec<(&str, usize)> = held.into_iter().collect();
        by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let dead: HashSet<String> = by_load
            .iter()
            .take(o.kill)
            .map(|(n, _)| (*n).to_owned())
            .collect();
        let orphans: HashSet<String> = s
            .placed
            .iter()
            .filter(|(_, (n, _))| dead.contains(n))
            .map(|(a, _)| a.clone())
            .collect();
        (dead, orphans)
    };
    progress(&format!(
        "{} nodes go silent, holding {} apps …",
        dead.len(),
        orphans.len()
    ));
    let failover_started = Instant::now();
    for (i, flag) in alive.iter().enumerate() {
        if dead.contains(&node_name(i)) {
            flag.store(false, Ordering::SeqCst);
        }
    }
    until(
        "every app of the silent nodes running elsewhere",
        Duration::from_secs(300),
        || seen.lock().is_ok_and(|s| s.all_running(&orphans, &dead)),
    )
    .await?;
    let failover_s = failover_started.elapsed().as_secs_f64();
    let cpu4 = cost_at();
    let cost = |pid: u32, pick: fn((f64, f64)) -> f64| Cost {
        cpu_join_s: pick(cpu1) - pick(cpu0),
        cpu_wave_s: pick(cpu2) - pick(cpu1),
        cpu_idle_10s: pick(cpu3) - pick(cpu2),
        cpu_failover_s: pick(cpu4) - pick(cpu3),
        rss_kib: status_kib(pid, "VmRSS"),
        peak_rss_kib: status_kib(pid, "VmHWM"),
    };
    let report = FleetReport {
        nodes: o.nodes,
        apps: o.apps,
        killed: dead.len(),
        submitters: o.submitters,
        join_s,
        placed_s,
        running_s,
        orphans: orphans.len(),
        failover_s,
        lost_after_s: LOST_AFTER.as_secs_f64(),
        controller: cost(ctl_pid, |c| c.0),
        nats: cost(nats_pid, |c| c.1),
    };
    drop(controller);
    server.stop().await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_every_deployment_names_is_valid_wasm() {
        wasmparser::validate(MODULE).expect("valid");
    }

    #[test]
    fn an_app_runs_only_where_its_record_places_it_and_not_on_a_dead_node() {
        let mut s = Seen::default();
        let apps: HashSet<String> = ["a".to_owned()].into();
        let dead: HashSet<String> = ["n1".to_owned()].into();
        s.placed.insert("a".into(), ("n1".into(), 1));
        s.running.insert("a".into(), ("n1".into(), 1));
        assert!(s.all_running(&apps, &HashSet::new()));
        assert!(!s.all_running(&apps, &dead));
        s.placed.insert("a".into(), ("n2".into(), 2));
        assert!(!s.all_running(&apps, &dead), "not reported there yet");
        s.running.insert("a".into(), ("n2".into(), 2));
        assert!(s.all_running(&apps, &dead));
    }
}
