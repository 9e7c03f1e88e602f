//! `tern up`: a whole continuum on one machine. A `nats-server` child with JetStream in
//! the state directory, the control plane in this process, and one `tern node` process
//! per node of the configuration, each of which talks to the others only through NATS
//! and their links: the same code a fleet runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tern_runtime::EngineKind;

use crate::backbone::{
    Backbone, BackboneError, NatsServer, NodeEvent, die_with_parent, reap, terminate,
};
use crate::emulate::Shape;
use crate::manifest::valid_name;
use crate::model::Tier;

/// One node of a continuum configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub site: String,
    pub tier: Tier,
    pub engine: EngineKind,
    /// `None`: every core of this machine.
    pub cores: Option<u32>,
    pub memory: u64,
    pub labels: BTreeMap<String, String>,
}

/// The nodes `tern up` starts, and the emulated links between their sites.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuumConfig {
    pub nodes: Vec<NodeSpec>,
    pub links: Vec<LinkSpec>,
}

/// The emulated link between two sites: every byte between their nodes goes through it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    pub sites: [String; 2],
    pub shape: Shape,
}

impl ContinuumConfig {
    /// The `--emulate-link` flags of node `spec`: one per site it has a link to.
    fn links_of(&self, spec: &NodeSpec) -> Vec<String> {
        self.links
            .iter()
            .filter_map(|l| {
                let other = match &l.sites {
                    [a, b] if *a == spec.site => b,
                    [a, b] if *b == spec.site => a,
                    _ => return None,
                };
                Some(format!(
                    "{other}={}/{}",
                    l.shape.rtt_ms(),
                    l.shape.rate as f64 / 1e6
                ))
            })
            .collect()
    }
}

impl Default for ContinuumConfig {
    /// A cloud node (Cranelift, every core), an edge node (Cranelift, one core,
    /// 512 MiB) and an IoT node (the Pulley interpreter, 128 MiB), one site each, with
    /// links of 20 ms round trip and 100 Mbit/s between cloud and edge, 5 ms and
    /// 50 Mbit/s between edge and IoT, and 40 ms and 20 Mbit/s between cloud and IoT.
    fn default() -> ContinuumConfig {
        let node = |name: &str, tier, engine, cores, memory_mib: u64| NodeSpec {
            name: name.into(),
            site: name.into(),
            tier,
            engine,
            cores,
            memory: memory_mib << 20,
            labels: BTreeMap::new(),
        };
        let link = |a: &str, b: &str, rtt_ms, mbit| LinkSpec {
            sites: [a.into(), b.into()],
            shape: Shape::of_rtt(rtt_ms, mbit),
        };
        ContinuumConfig {
            nodes: vec![
                node("cloud", Tier::Cloud, EngineKind::Cranelift, None, 4096),
                node("edge", Tier::Edge, EngineKind::Cranelift, Some(1), 512),
                node("iot", Tier::Iot, EngineKind::Pulley, Some(1), 128),
            ],
            links: vec![
                link("cloud", "edge", 20.0, 100.0),
                link("edge", "iot", 5.0, 50.0),
                link("cloud", "iot", 40.0, 20.0),
            ],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "node")]
    nodes: Vec<RawNode>,
    #[serde(rename = "link", default)]
    links: Vec<RawLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    sites: [String; 2],
    rtt_ms: f64,
    #[serde(default = "hundred")]
    mbit: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    site: Option<String>,
    tier: String,
    #[serde(default = "cranelift")]
    engine: String,
    cores: Option<u32>,
    memory: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn cranelift() -> String {
    "cranelift".into()
}

/// Reads a continuum configuration: `[[node]]` tables with `name`, `tier`, `memory` and
/// optionally `site`, `engine`, `cores` and `labels`; and `[[link]]` tables with
/// `sites` (two), `rtt_ms` and optionally `mbit` (default 100), the emulated link
/// between those sites.
///
/// # Errors
/// One line naming the node and what is wrong.
pub fn parse_config(text: &str) -> Result<ContinuumConfig, String> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| e.message().trim_end().to_owned())?;
    if raw.nodes.is_empty() {
        return Err("no [[node]]: a continuum needs at least one node".into());
    }
    let mut nodes = Vec::new();
    for (i, n) in raw.nodes.into_iter().enumerate() {
        let at = |what: String| format!("node {} ({}): {what}", i + 1, n.name);
        if !valid_name(&n.name) {
            return Err(at(
                "not a node name: use lowercase letters, digits and `-`".into()
            ));
        }
        if let Some(site) = &n.site
            && !valid_name(site)
        {
            return Err(at(format!(
                "site `{site}` is not a site name: use lowercase letters, digits and `-`"
            )));
        }
        if nodes.iter().any(|m: &NodeSpec| m.name == n.name) {
            return Err(at("the name is given twice".into()));
        }
        let tier = n.tier.parse().map_err(at)?;
        let engine = n
            .engine
            .parse()
            .map_err(|e: tern_runtime::RuntimeError| at(e.to_string()))?;
        let memory = tern_runtime::parse_size(&n.memory).map_err(|e| at(e.to_string()))?;
        if n.cores == Some(0) {
            return Err(at("cores must be at least 1".into()));
        }
        nodes.push(NodeSpec {
            site: n.site.clone().unwrap_or_else(|| n.name.clone()),
            name: n.name,
            tier,
            engine,
            cores: n.cores,
            memory,
            labels: n.labels,
        });
    }
    let mut links: Vec<LinkSpec> = Vec::new();
    for (i, l) in raw.links.into_iter().enumerate() {
        let at = |what: String| format!("link {} ({}–{}): {what}", i + 1, l.sites[0], l.sites[1]);
        for site in &l.sites {
            if !nodes.iter().any(|n| n.site == *site) {
                return Err(at(format!("no node is at site `{site}`")));
            }
        }
        if l.sites[0] == l.sites[1] {
            return Err(at("a link joins two different sites".into()));
        }
        if !(0.0..=10_000.0).contains(&l.rtt_ms) || !(0.001..=100_000.0).contains(&l.mbit) {
            return Err(at(
                "rtt_ms must be 0 to 10000 and mbit 0.001 to 100000".into()
            ));
        }
        let same = |o: &LinkSpec| {
            let mut a = o.sites.clone();
            let mut b = l.sites.clone();
            a.sort();
            b.sort();
            a == b
        };
        if links.iter().any(same) {
            return Err(at("these sites are linked twice".into()));
        }
        links.push(LinkSpec {
            sites: l.sites.clone(),
            shape: Shape::of_rtt(l.rtt_ms, l.mbit),
        });
    }
    Ok(ContinuumConfig { nodes, links })
}

/// The `tern node` command line of `spec`, joining `nats`.
pub fn node_args(config: &ContinuumConfig, spec: &NodeSpec, nats: &str) -> Vec<String> {
    let mut a = vec![
        "node".into(),
        "--nats".into(),
        nats.into(),
        "--name".into(),
        spec.name.clone(),
        "--site".into(),
        spec.site.clone(),
        "--tier".into(),
        spec.tier.to_string(),
        "--engine".into(),
        spec.engine.to_string(),
        "--memory".into(),
        format!("{}B", spec.memory),
    ];
    if let Some(c) = spec.cores {
        a.extend(["--cores".into(), c.to_string()]);
    }
    for (k, v) in &spec.labels {
        a.extend(["--label".into(), format!("{k}={v}")]);
    }
    for l in config.links_of(spec) {
        a.extend(["--emulate-link".into(), l]);
    }
    a
}

/// A running continuum: the backbone server and the node processes.
#[derive(Debug)]
pub struct Continuum {
    pub server: NatsServer,
    pub nodes: Vec<NodeProcess>,
    /// The lock on the state directory, held while the continuum runs.
    _lock: StateLock,
}

/// Where the continuum's backbone listens, and the host other machines reach it by.
#[derive(Debug, Clone)]
pub struct Reach {
    /// The address it listens on (`0.0.0.0`: every interface).
    pub ip: std::net::IpAddr,
    /// The host other machines reach this one by, when not `ip`.
    pub advertise: Option<String>,
}

impl Default for Reach {
    fn default() -> Reach {
        Reach {
            ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            advertise: None,
        }
    }
}

/// One node's process, and when it is to be started again if it ended.
#[derive(Debug)]
pub struct NodeProcess {
    pub name: String,
    pub child: Option<tokio::process::Child>,
    started: std::time::Instant,
    /// The pause before the next restart.
    backoff: Duration,
    restart_at: Option<std::time::Instant>,
}

/// The pause before a node or the server that ended is started again: it doubles at
/// each restart up to [`MAX_BACKOFF`], and falls back once the process has run for
/// [`STEADY`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STEADY: Duration = Duration::from_secs(60);

/// An exclusive lock on a continuum's state directory (`STATE/lock`, holding the
/// owner's pid): two `tern up`s on one state would run two servers on one JetStream
/// directory and two nodes under each name.
#[derive(Debug)]
struct StateLock(#[allow(dead_code)] std::fs::File);

impl StateLock {
    fn take(state: &Path) -> Result<StateLock, String> {
        std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
        let path = state.join("lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let owner = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(format!(
                "another `tern up` (pid {}) runs on {}; stop it first, or give another --state",
                owner.trim(),
                state.display()
            ));
        }
        use std::io::Write as _;
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(StateLock(file))
    }
}

impl Continuum {
    /// Starts nats-server in `state/nats`, then a `tern node` process (`tern` is this
    /// program) per node, one after another: each measures its compute alone, not
    /// against the others' measurements on the same cores. Node output goes to
    /// `state/logs/NODE.log`. Returns once every node has joined.
    ///
    /// # Errors
    /// One line: the server that does not start, a node that cannot be spawned, exits
    /// or does not join within `within` (its log is named); what was started is
    /// stopped.
    pub async fn start(
        config: &ContinuumConfig,
        state: &Path,
        tern: &Path,
        reach: &Reach,
        within: Duration,
    ) -> Result<(Continuum, Backbone), String> {
        let lock = StateLock::take(state)?;
        let server = NatsServer::start_listening(
            &state.join("nats"),
            reach.ip,
            0,
            reach.advertise.as_deref(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut continuum = Continuum {
            server,
            nodes: Vec::new(),
            _lock: lock,
        };
        match continuum.start_nodes(config, state, tern, within).await {
            Ok(backbone) => Ok((continuum, backbone)),
            Err(e) => {
                continuum.stop().await;
                Err(e)
            }
        }
    }

    async fn start_nodes(
        &mut self,
        config: &ContinuumConfig,
        state: &Path,
        tern: &Path,
        within: Duration,
    ) -> Result<Backbone, String> {
        let backbone = self.server.backbone().await.map_err(|e| e.to_string())?;
        let mut events = Box::pin(backbone.watch_nodes().await.map_err(|e| e.to_string())?);
        let identities = crate::identity::Identities::open(&backbone)
            .await
            .map_err(|e| e.to_string())?;
        for spec in &config.nodes {
            // Its name is bound to its key, as an enrolled node's: no other may take it.
            let creds = self
                .server
                .node_credentials(&spec.name)
                .map_err(|e| format!("node {}: {e}", spec.name))?;
            let key = std::fs::read_to_string(&creds)
                .ok()
                .and_then(|t| tern_trust::nats::user_of_credentials(&t))
                .ok_or_else(|| format!("node {}: no key in {}", spec.name, creds.display()))?;
            identities
                .bind(&spec.name, &key)
                .await
                .map_err(|e| format!("node {}: {e}", spec.name))?;
            let (mut child, log) = self.spawn_node(config, spec, state, tern)?;
            let joined = joined(&mut events, &mut child, &spec.name, &log, within).await;
            // Kept even when it failed to join, so that `stop` ends it.
            self.nodes.push(NodeProcess {
                name: spec.name.clone(),
                child: Some(child),
                started: std::time::Instant::now(),
                backoff: FIRST_BACKOFF,
                restart_at: None,
            });
            joined?;
        }
        Ok(backbone)
    }

    /// Starts node `spec`'s process, its output appended to `state/logs/NODE.log`.
    fn spawn_node(
        &self,
        config: &ContinuumConfig,
        spec: &NodeSpec,
        state: &Path,
        tern: &Path,
    ) -> Result<(tokio::process::Child, PathBuf), String> {
        let logs = state.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let log = logs.join(format!("{}.log", spec.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let creds = self
            .server
            .node_credentials(&spec.name)
            .map_err(|e| format!("node {}: {e}", spec.name))?;
        let mut command = tokio::process::Command::new(tern);
        command
            .args(node_args(config, spec, &self.server.local_url()))
            .arg("--state")
            .arg(state.join("nodes").join(&spec.name))
            .arg("--creds")
            .arg(creds)
            .arg("--ca")
            .arg(self.server.ca_file())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // A `tern up` killed outright takes its nodes with it (each checkpoints its
        // apps and leaves as on Ctrl-C).
        die_with_parent(&mut command, rustix::process::Signal::TERM);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start node {}: {e}", spec.name))?;
        Ok((child, log))
    }

    /// Keeps the continuum whole until `stop` completes: a node process that ended is
    /// started again after a back-off (1 s, doubling up to 30 s, and back to 1 s once
    /// it has run a minute), and so is nats-server, on the same port and state
    /// (clients reconnect by themselves). Each restart is said on stderr.
    pub async fn keep(
        &mut self,
        config: &ContinuumConfig,
        state: &Path,
        tern: &Path,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut server_backoff = FIRST_BACKOFF;
        let mut server_restart_at: Option<std::time::Instant> = None;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            let now = std::time::Instant::now();
            if let Some(status) = self.server.exited() {
                match server_restart_at {
                    None => {
                        eprintln!(
                            "nats-server exited ({status}); starting it again in {} s",
                            server_backoff.as_secs()
                        );
                        server_restart_at = Some(now + server_backoff);
                    }
                    Some(at) if now >= at => {
                        server_restart_at = None;
                        match self.server.restart().await {
                            Ok(()) => eprintln!("nats-server started again"),
                            Err(e) => eprintln!("nats-server did not start again: {e}"),
                        }
                        server_backoff = (server_backoff * 2).min(MAX_BACKOFF);
                    }
                    Some(_) => {}
                }
            } else if self.server.running_for() > STEADY {
                server_backoff = FIRST_BACKOFF;
            }
            for i in 0..self.nodes.len() {
                let n = &mut self.nodes[i];
                let ended = match n.child.as_mut().map(tokio::process::Child::try_wait) {
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Ok(None)) => None,
                    Some(Err(e)) => Some(e.to_string()),
                    None => None,
                };
                if let Some(status) = ended {
                    n.child = None;
                    if n.started.elapsed() > STEADY {
                        n.backoff = FIRST_BACKOFF;
                    }
                    eprintln!(
                        "node {} exited ({status}); starting it again in {} s (its log: {})",
                        n.name,
                        n.backoff.as_secs(),
                        state.join("logs").join(format!("{}.log", n.name)).display()
                    );
                    n.restart_at = Some(now + n.backoff);
                    n.backoff = (n.backoff * 2).min(MAX_BACKOFF);
                }
                let due = self.nodes[i].child.is_none()
                    && self.nodes[i].restart_at.is_some_and(|at| now >= at);
                let Some(spec) = config.nodes.iter().find(|s| s.name == self.nodes[i].name) else {
                    continue;
                };
                if due {
                    match self.spawn_node(config, spec, state, tern) {
                        Ok((child, _)) => {
                            eprintln!("node {} started again", spec.name);
                            let n = &mut self.nodes[i];
                            n.child = Some(child);
                            n.started = std::time::Instant::now();
                            n.restart_at = None;
                        }
                        Err(e) => {
                            let n = &mut self.nodes[i];
                            eprintln!("{e}; trying again in {} s", n.backoff.as_secs());
                            n.restart_at = Some(now + n.backoff);
                            n.backoff = (n.backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        }
    }

    /// Stops every node (SIGTERM: each leaves the registry), then the server.
    pub async fn stop(mut self) {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            terminate(child);
        }
        for child in self.nodes.iter_mut().filter_map(|n| n.child.as_mut()) {
            reap(child, Duration::from_secs(5)).await;
        }
        self.server.stop().await;
    }
}

/// Waits until the registry says node `name` (the process `child`) has joined, up to
/// `within`.
async fn joined(
    events: &mut (impl futures_util::Stream<Item = Result<NodeEvent, BackboneError>> + Unpin),
    child: &mut tokio::process::Child,
    name: &str,
    log: &Path,
    within: Duration,
) -> Result<(), String> {
    use futures_util::StreamExt as _;
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(NodeEvent::Up(n))) if n.name == name => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the node registry's watch ended".into()),
            },
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(format!("node {name} exited ({status}); see {}", log.display()));
            }
            () = &mut deadline => {
                return Err(format!(
                    "node {name} did not join within {} s; see {}",
                    within.as_secs(),
                    log.display()
                ));
            }
        }
    }
}

/// The API's token, which acts on the continuum, in `tern up`'s state directory.
pub const API_TOKEN_FILE: &str = "api/token";
/// The API's read-only token, in `tern up`'s state directory.
pub const READ_TOKEN_FILE: &str = "api/read-token";

/// Where `tern up` keeps its state when not told: `$XDG_STATE_HOME/tern` or
/// `~/.local/state/tern`.
pub fn default_state() -> PathBuf {
    match std::env::var_os("XDG_STATE_HOME") {
        Some(s) => PathBuf::from(s).join("tern"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/state/tern")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_reads_and_bad_ones_name_the_node() {
        let c = parse_config(
            "[[node]]\nname = \"gw\"\ntier = \"iot\"\nengine = \"pulley\"\nmemory = \"64MiB\"\nlabels = { floor = \"2\" }\n",
        )
        .expect("valid");
        assert_eq!(c.nodes[0].site, "gw");
        assert_eq!(c.nodes[0].engine, EngineKind::Pulley);
        let args = node_args(&c, &c.nodes[0], "nats://x");
        assert!(
            args.windows(2).any(|w| w == ["--label", "floor=2"]),
            "{args:?}"
        );
        let cases = [
            (
                "[[node]]\nname = \"a\"\ntier = \"fog\"\nmemory = \"1G\"\n",
                "node 1 (a): unknown tier `fog`",
            ),
            (
                "[[node]]\nname = \"a\"\ntier = \"edge\"\nmemory = \"lots\"\n",
                "node 1 (a): invalid size `lots`",
            ),
            (
                "[[node]]\nname = \"A\"\ntier = \"edge\"\nmemory = \"1G\"\n",
                "node 1 (A): not a node name",
            ),
            ("node = []\n", "no [[node]]"),
            (
                "[[node]]\nname = \"a\"\ntier = \"edge\"\nmemory = \"1G\"\nram = 1\n",
                "unknown field `ram`",
            ),
        ];
        for (text, want) in cases {
            let e = parse_config(text).expect_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_default_continuum_has_a_cloud_an_edge_and_an_iot_node() {
        let c = ContinuumConfig::default();
        let tiers: Vec<Tier> = c.nodes.iter().map(|n| n.tier).collect();
        assert_eq!(tiers, Tier::ALL);
        assert_eq!(c.nodes[2].engine, EngineKind::Pulley);
        // The edge node has a link to each of the others.
        let args = node_args(&c, &c.nodes[1], "nats://x");
        let links: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--emulate-link")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(links, ["cloud=20/100", "iot=5/50"]);
    }

    #[test]
    fn links_name_sites_that_exist() {
        let nodes = "[[node]]\nname = \"a\"\ntier = \"edge\"\nmemory = \"1G\"\n[[node]]\nname = \"b\"\ntier = \"iot\"\nmemory = \"1G\"\n";
        let c = parse_config(&format!(
            "{nodes}[[link]]\nsites = [\"a\", \"b\"]\nrtt_ms = 8\n"
        ))
        .expect("valid");
        assert_eq!(c.links[0].shape, Shape::of_rtt(8.0, 100.0));
        let e = parse_config(&format!(
            "{nodes}[[link]]\nsites = [\"a\", \"z\"]\nrtt_ms = 8\n"
        ))
        .expect_err("no site z");
        assert_eq!(e, "link 1 (a–z): no node is at site `z`");
        let e = parse_config(&format!(
            "{nodes}[[link]]\nsites = [\"a\", \"b\"]\nrtt_ms = 8\n[[link]]\nsites = [\"b\", \"a\"]\nrtt_ms = 9\n"
        ))
        .expect_err("twice");
        assert!(e.ends_with("these sites are linked twice"), "{e}");
    }
}
