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

use crate::backbone::{Backbone, BackboneError, NatsServer, NodeEvent, reap, terminate};
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

/// The nodes `tern up` starts.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuumConfig {
    pub nodes: Vec<NodeSpec>,
}

impl Default for ContinuumConfig {
    /// A cloud node (Cranelift, every core), an edge node (Cranelift, one core,
    /// 512 MiB) and an IoT node (the Pulley interpreter, 128 MiB), one site each.
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
        ContinuumConfig {
            nodes: vec![
                node("cloud", Tier::Cloud, EngineKind::Cranelift, None, 4096),
                node("edge", Tier::Edge, EngineKind::Cranelift, Some(1), 512),
                node("iot", Tier::Iot, EngineKind::Pulley, Some(1), 128),
            ],
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(rename = "node")]
    nodes: Vec<RawNode>,
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
/// optionally `site`, `engine`, `cores` and `labels`.
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
    Ok(ContinuumConfig { nodes })
}

/// The `tern node` command line of `spec`, joining `nats`.
pub fn node_args(spec: &NodeSpec, nats: &str) -> Vec<String> {
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
    a
}

/// A running continuum: the backbone server and the node processes.
#[derive(Debug)]
pub struct Continuum {
    pub server: NatsServer,
    pub nodes: Vec<(String, tokio::process::Child)>,
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
        within: Duration,
    ) -> Result<(Continuum, Backbone), String> {
        let server = NatsServer::start(&state.join("nats"), 0)
            .await
            .map_err(|e| e.to_string())?;
        let mut continuum = Continuum {
            server,
            nodes: Vec::new(),
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
        let logs = state.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        for spec in &config.nodes {
            let log = logs.join(format!("{}.log", spec.name));
            let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let err = out
                .try_clone()
                .map_err(|e| format!("{}: {e}", log.display()))?;
            // The token goes in the environment, not on the command line `ps` shows.
            let mut child = tokio::process::Command::new(tern)
                .args(node_args(spec, self.server.url()))
                .arg("--state")
                .arg(state.join("nodes").join(&spec.name))
                .env("TERN_JOIN_TOKEN", self.server.token())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start node {}: {e}", spec.name))?;
            let joined = joined(&mut events, &mut child, &spec.name, &log, within).await;
            // Kept even when it failed to join, so that `stop` ends it.
            self.nodes.push((spec.name.clone(), child));
            joined?;
        }
        Ok(backbone)
    }

    /// Stops every node (SIGTERM: each leaves the registry), then the server.
    pub async fn stop(mut self) {
        for (_, child) in &self.nodes {
            terminate(child);
        }
        for (_, child) in &mut self.nodes {
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
        let args = node_args(&c.nodes[0], "nats://x");
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
    }
}
