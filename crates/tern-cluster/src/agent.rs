//! The node agent: a node joins the backbone with its descriptor and what it measured
//! of itself, keeps its entry alive with heartbeats, and leaves when told to stop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tern_runtime::{Engine, EngineKind, EngineOptions, Limits, Outcome, Policy, Program};

use crate::backbone::{Backbone, BackboneError, HEARTBEAT, NodeEvent};
use crate::model::{Heartbeat, NodeDescriptor, NodeLoad, Tee, Tier};

/// What a node declares about itself.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub site: String,
    pub tier: Tier,
    pub engine: EngineKind,
    pub cores: u32,
    pub memory: u64,
    pub labels: BTreeMap<String, String>,
    /// Where the node listens for other nodes' pings (and, later, migrations).
    pub link_listen: std::net::SocketAddr,
    /// The address other nodes reach the link at [default: what `link_listen` bound].
    pub link_advertise: Option<String>,
    /// Where the node keeps its instances' files.
    pub state: std::path::PathBuf,
    /// The `tern` program, which runs each instance.
    pub tern: std::path::PathBuf,
    /// Emulated links to other sites: every byte for a node of such a site (pings,
    /// migrations) goes through a relay of this shape.
    pub links: BTreeMap<String, crate::emulate::Shape>,
    /// The node's TLS identity for migration streams ([`crate::supervisor::Host::tls`]).
    pub tls: Option<tern_trust::tls::NodeTls>,
}

/// Why a node could not join or stay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error("cannot measure this node's compute: {reason}")]
    Measure { reason: String },
    #[error("cannot start this node's heartbeats: {0}")]
    Heartbeats(String),
    #[error("cannot listen for other nodes on {addr}: {reason}")]
    Link {
        addr: std::net::SocketAddr,
        reason: String,
    },
}

/// How often a node pings every peer.
const PING_EVERY: Duration = Duration::from_millis(500);

/// A peer: its link address and its site.
type Peers = std::sync::Mutex<BTreeMap<String, (String, String)>>;

/// Pings every peer every [`PING_EVERY`], each over a connection of its own kept open
/// (through the emulated link to its site, if any), and keeps `rtt` (by peer) up to
/// date. Runs on its own: a peer that does not answer delays no heartbeat.
async fn ping_peers(
    peers: std::sync::Arc<Peers>,
    links: BTreeMap<String, crate::emulate::Shape>,
    rtt: std::sync::Arc<std::sync::Mutex<BTreeMap<String, f64>>>,
) {
    // Each peer's prober and, for a peer behind an emulated link, its relay.
    let mut probers: BTreeMap<String, (String, crate::link::Prober, Option<crate::emulate::Link>)> =
        BTreeMap::new();
    let mut measured = crate::link::Measured::default();
    let mut every = tokio::time::interval(PING_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let known: Vec<(String, String, String)> = match peers.lock() {
            Ok(p) => p
                .iter()
                .map(|(n, (l, site))| (n.clone(), l.clone(), site.clone()))
                .collect(),
            Err(_) => return,
        };
        probers.retain(|n, (to, _, _)| known.iter().any(|(k, l, _)| k == n && l == to));
        for (name, addr, site) in known {
            if probers.contains_key(&name) {
                continue;
            }
            let relay = match links.get(&site) {
                None => None,
                Some(shape) => match crate::emulate::Link::start(addr.clone(), *shape) {
                    Ok(relay) => Some(relay),
                    Err(e) => {
                        tracing::warn!(peer = %name, error = %e, "no emulated link");
                        continue;
                    }
                },
            };
            let via = relay
                .as_ref()
                .map_or_else(|| addr.clone(), |r| r.addr.clone());
            probers.insert(name, (addr, crate::link::Prober::new(via), relay));
        }
        let pings = probers
            .iter_mut()
            .map(|(name, (_, p, _))| async move { (name.clone(), p.probe().await) });
        for (name, sample) in futures_util::future::join_all(pings).await {
            measured.record(&name, sample);
        }
        measured.retain(|n| probers.contains_key(n));
        if let Ok(mut r) = rtt.lock() {
            *r = measured.rtt_ms();
        }
    }
}

/// How long the agent's own async runtime may go without running before its
/// heartbeats stop. A runtime that a busy machine starves for seconds is slow, not
/// dead, and its apps (processes of their own) run on; one stuck this long is wedged,
/// and the control plane should place its apps elsewhere.
pub const WEDGED_AFTER: Duration = Duration::from_secs(60);

/// The node's heartbeats, from a thread of their own with a connection of their own
/// to the server. On the agent's runtime they waited behind whatever its two workers
/// were doing: fifty migrations coming in at once on a busy 2-core machine delayed
/// them past `--lost-after`, and the control plane took a working node for lost and
/// restarted its apps elsewhere. A task on the agent's runtime stamps the time twice a
/// second; the heartbeats stop once that stamp is [`WEDGED_AFTER`] old, so a wedged
/// agent is still found out. They end when this is dropped.
struct Heartbeats {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    awake: tokio::task::JoinHandle<()>,
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.awake.abort();
    }
}

impl Heartbeats {
    /// Starts saying every [`HEARTBEAT`] that node `name` is alive, with its load and
    /// round trips. A heartbeat that cannot go out is logged and the next one goes on:
    /// nothing here ends the node.
    fn start(
        backbone: &Backbone,
        name: String,
        load: std::sync::Arc<std::sync::Mutex<NodeLoad>>,
        rtt: std::sync::Arc<std::sync::Mutex<BTreeMap<String, f64>>>,
    ) -> Result<Heartbeats, AgentError> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let epoch = Instant::now();
        let stamp = std::sync::Arc::new(AtomicU64::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let awake = tokio::spawn({
            let stamp = stamp.clone();
            async move {
                let mut every = tokio::time::interval(HEARTBEAT);
                loop {
                    every.tick().await;
                    stamp.store(millis(epoch.elapsed()), Ordering::Relaxed);
                }
            }
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AgentError::Heartbeats(e.to_string()))?;
        let (backbone, stopping) = (backbone.clone(), stop.clone());
        std::thread::Builder::new()
            .name("heartbeats".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let stopped = || stopping.load(Ordering::Relaxed);
                    let Some(client) = second_connection(&backbone, &stopped).await else {
                        return;
                    };
                    let mut beat = tokio::time::interval(HEARTBEAT);
                    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let (mut failing, mut wedged) = (false, false);
                    while !stopped() {
                        beat.tick().await;
                        let still = epoch
                            .elapsed()
                            .saturating_sub(Duration::from_millis(stamp.load(Ordering::Relaxed)));
                        if still > WEDGED_AFTER {
                            if !wedged {
                                wedged = true;
                                tracing::error!(
                                    "this agent has not run for {} s: no heartbeat until it does, so its apps are placed elsewhere",
                                    still.as_secs()
                                );
                            }
                            continue;
                        }
                        wedged = false;
                        let b = Heartbeat {
                            name: name.clone(),
                            load: load.lock().map(|l| *l).unwrap_or_default(),
                            rtt_ms: rtt.lock().map(|r| r.clone()).unwrap_or_default(),
                        };
                        match crate::backbone::beat_on(&client, &b).await {
                            Ok(()) if failing => {
                                failing = false;
                                tracing::info!("heartbeats go out again");
                            }
                            Ok(()) => {}
                            Err(e) if !failing => {
                                failing = true;
                                tracing::warn!(error = %e, "heartbeat not sent; trying again, the apps run on");
                            }
                            Err(_) => {}
                        }
                    }
                });
            })
            .map_err(|e| AgentError::Heartbeats(e.to_string()))?;
        Ok(Heartbeats { stop, awake })
    }
}

/// The heartbeats' connection, tried again every [`HEARTBEAT`] until it is made or
/// `stopped` says the node is leaving (`None`).
async fn second_connection(
    backbone: &Backbone,
    stopped: &impl Fn() -> bool,
) -> Option<async_nats::Client> {
    let mut said = false;
    while !stopped() {
        match backbone.second_connection().await {
            Ok(c) => return Some(c),
            Err(e) if !said => {
                said = true;
                tracing::warn!(error = %e, "heartbeats: no connection yet; trying again, the apps run on");
            }
            Err(_) => {}
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
    None
}

/// `d` in whole milliseconds.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Follows the registry for the other nodes' links, and joins again if this node's own
/// entry goes while it runs (the control plane took it for lost: it was cut off or
/// stalled). Re-opens the registry's watch whenever it ends.
async fn follow_registry(backbone: Backbone, me: NodeDescriptor, peers: std::sync::Arc<Peers>) {
    use futures_util::StreamExt as _;
    let watching = backbone.clone();
    let mut events = Box::pin(crate::backbone::rewatch("node registry", move || {
        let b = watching.clone();
        async move { b.watch_nodes().await }
    }));
    while let Some(event) = events.next().await {
        match event {
            NodeEvent::Up(n) if n.name != me.name => {
                if let (Ok(mut p), Some(l)) = (peers.lock(), n.link) {
                    p.insert(n.name, (l, n.site));
                }
            }
            NodeEvent::Gone(name) if name == me.name => {
                tracing::warn!(
                    "the control plane took this node for lost (its apps were placed elsewhere); joining again"
                );
                let mut wait = Duration::from_millis(200);
                while let Err(e) = backbone.register(&me).await {
                    tracing::warn!(error = %e, "cannot join again yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
            NodeEvent::Gone(name) => {
                if let Ok(mut p) = peers.lock() {
                    p.remove(&name);
                }
            }
            NodeEvent::Up(_) => {}
        }
    }
}

/// Iterations of the compute benchmark's loop per run.
const ITERATIONS: u32 = 2_000_000;
/// How long the measurement runs the benchmark at least, and runs at least.
const MEASURE_FOR: Duration = Duration::from_millis(300);
const MIN_RUNS: usize = 3;

/// The compute benchmark: a PRNG, a float accumulator and scattered stores in one
/// loop, so integer, float and memory work all count.
fn benchmark_wat() -> String {
    format!(
        r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32) (local $x i64) (local $f f64)
    (local.set $x (i64.const 88172645463325252))
    (loop $l
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
      (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
      (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
      (local.set $f (f64.add (f64.mul (local.get $f) (f64.const 0.5))
                             (f64.convert_i64_u (local.get $x))))
      (i64.store (i32.and (i32.wrap_i64 (local.get $x)) (i32.const 0xfff8)) (local.get $x))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {ITERATIONS}))))
    (f64.store (i32.const 0) (local.get $f))))"#
    )
}

/// Runs the compute benchmark under `engine` with `memory` as the memory limit, and
/// returns the node's compute score: runs per second (the median run) times `cores`.
///
/// # Errors
/// [`AgentError::Measure`] when the engine cannot be set up or the guest does not end
/// normally.
pub fn measure_compute(engine: EngineKind, cores: u32, memory: u64) -> Result<f64, AgentError> {
    let bad = |e: &dyn std::fmt::Display| AgentError::Measure {
        reason: e.to_string(),
    };
    let engine = Engine::new(EngineOptions {
        kind: engine,
        ..EngineOptions::default()
    })
    .map_err(|e| bad(&e))?;
    let module = wasmtime::Module::new(engine.wasmtime(), benchmark_wat()).map_err(|e| bad(&e))?;
    let program = Program::new(&engine, module).map_err(|e| bad(&e))?;
    let limits = Limits {
        max_memory: Some(memory),
        ..Limits::default()
    };
    let policy = Policy::default();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < MIN_RUNS || start.elapsed() < MEASURE_FOR {
        let t = Instant::now();
        match program.run(&policy, &limits).map_err(|e| bad(&e))? {
            Outcome::Exited(0) => times.push(t.elapsed().as_secs_f64()),
            other => return Err(bad(&format!("the benchmark guest ended with {other:?}"))),
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(score(cores, times[times.len() / 2]))
}

/// The compute score of a node with `cores` whose benchmark's median run took
/// `median` seconds: runs per second times cores.
fn score(cores: u32, median: f64) -> f64 {
    f64::from(cores.max(1)) / median.max(1e-9)
}

/// [`measure_compute`] in a process of its own (`tern instance --measure …`), so that
/// the agent, which runs no guest itself, never holds a compiler and its code in
/// memory.
async fn measure_in_child(
    tern: &std::path::Path,
    engine: EngineKind,
    cores: u32,
    memory: u64,
) -> Result<f64, AgentError> {
    let out = tokio::process::Command::new(tern)
        .args(["instance", "--measure", "--engine"])
        .arg(engine.to_string())
        .args([
            "--cores",
            &cores.to_string(),
            "--memory",
            &memory.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| AgentError::Measure {
            reason: format!("cannot start `{} instance --measure`: {e}", tern.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim().parse::<f64>() {
        Ok(score) if out.status.success() => Ok(score),
        _ => Err(AgentError::Measure {
            reason: String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("error: ")
                .to_owned(),
        }),
    }
}

/// Measures the node, joins the backbone and heartbeats until `stop` completes; then
/// leaves, so the continuum knows at once. `joined` is called once with the
/// descriptor the node registered.
///
/// # Errors
/// [`AgentError`] when the measurement fails or the backbone cannot be reached.
pub async fn run(
    config: NodeConfig,
    backbone: &Backbone,
    stop: impl std::future::Future<Output = ()>,
    joined: impl FnOnce(&NodeDescriptor),
) -> Result<(), AgentError> {
    let compute_score =
        measure_in_child(&config.tern, config.engine, config.cores, config.memory).await?;
    let listener = tokio::net::TcpListener::bind(config.link_listen)
        .await
        .map_err(|e| AgentError::Link {
            addr: config.link_listen,
            reason: e.to_string(),
        })?;
    let link = match config.link_advertise {
        Some(a) => a,
        None => listener
            .local_addr()
            .map_err(|e| AgentError::Link {
                addr: config.link_listen,
                reason: e.to_string(),
            })?
            .to_string(),
    };
    let answering = tokio::spawn(crate::link::answer(listener));
    let links = config.links.clone();
    let host = crate::supervisor::Host {
        links: config.links,
        site: config.site.clone(),
        node: config.name.clone(),
        link_host: link
            .rsplit_once(':')
            .map_or_else(|| link.clone(), |(h, _)| h.to_owned()),
        engine: config.engine,
        state: config.state,
        tern: config.tern,
        migrated: crate::supervisor::Migrated::default(),
        tls: config.tls,
    };
    let node = NodeDescriptor {
        name: config.name,
        arch: std::env::consts::ARCH.to_owned(),
        tier: config.tier,
        engine: config.engine,
        cores: config.cores,
        memory: config.memory,
        site: config.site,
        labels: config.labels,
        tee: Tee::None,
        compute_score,
        load: NodeLoad::default(),
        link: Some(link),
        rtt_ms: BTreeMap::new(),
    };
    backbone.register(&node).await?;
    joined(&node);
    let load = std::sync::Arc::new(std::sync::Mutex::new(NodeLoad::default()));
    let rtt = std::sync::Arc::default();
    let peers: std::sync::Arc<Peers> = std::sync::Arc::default();
    // Heartbeats, pings and the registry each run on their own, so that none waits
    // for another, and none can end the node: only `stop` does.
    let beating = Heartbeats::start(
        backbone,
        node.name.clone(),
        load.clone(),
        std::sync::Arc::clone(&rtt),
    )?;
    let pinging = tokio::spawn(ping_peers(peers.clone(), links, rtt));
    let following = tokio::spawn(follow_registry(backbone.clone(), node.clone(), peers));
    let (stop_instances, instances_stop) = tokio::sync::oneshot::channel::<()>();
    let instances = tokio::spawn(crate::supervisor::supervise(
        host,
        backbone.clone(),
        load,
        async move {
            let _ = instances_stop.await;
        },
    ));
    tokio::select! {
        () = stop => {}
        () = backbone.revoked() => {
            // Nothing it does reaches the continuum any more, and its apps are placed
            // elsewhere: they stop here at once (each instance dies with its agent).
            following.abort();
            pinging.abort();
            drop(beating);
            answering.abort();
            instances.abort();
            return Err(BackboneError::Revoked { node: node.name.clone() }.into());
        }
    }
    let _ = stop_instances.send(());
    // Heartbeats go on while the instances stop (they are checkpointed first), so
    // that the continuum does not take the node for lost and start them elsewhere.
    let stopped = instances.await;
    following.abort();
    pinging.abort();
    drop(beating);
    answering.abort();
    if let Err(e) = stopped {
        tracing::error!(error = %e, "the instances' supervisor failed");
    }
    backbone.leave(&node.name).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interpreter scores far below native code on the same machine (an order of
    /// magnitude and more; 5× leaves room for a busy machine). Each engine's best of
    /// three interleaved measurements: a run that other work starved only scores lower.
    #[test]
    fn the_compute_score_tells_engines_apart() {
        let (mut native, mut pulley) = (0.0f64, 0.0f64);
        for _ in 0..3 {
            native =
                native.max(measure_compute(EngineKind::Cranelift, 1, 64 << 20).expect("cranelift"));
            pulley = pulley.max(measure_compute(EngineKind::Pulley, 1, 64 << 20).expect("pulley"));
        }
        assert!(
            native > 5.0 * pulley,
            "cranelift {native:.1}, pulley {pulley:.1}"
        );
    }

    /// The score is runs per second times cores: more cores score more for the same
    /// run (computed, not timed, so a busy machine cannot flip it).
    #[test]
    fn more_cores_score_more_for_the_same_run() {
        assert_eq!(score(1, 0.5), 2.0);
        assert_eq!(score(2, 0.5), 4.0);
        assert_eq!(score(0, 0.5), 2.0, "no cores counts as one");
        assert!(score(1, 0.0).is_finite());
    }

    #[test]
    fn a_memory_limit_below_the_guest_is_a_clear_error() {
        let e = measure_compute(EngineKind::Cranelift, 1, 1024).expect_err("1 KiB");
        assert!(
            e.to_string()
                .starts_with("cannot measure this node's compute: "),
            "{e}"
        );
    }
}
