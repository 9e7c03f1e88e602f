//! `tern node`: a node agent. It measures this machine under its engine, joins the
//! continuum's backbone, runs the apps placed on it, and heartbeats until it is stopped.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use tern_cluster::Tier;
use tern_cluster::agent::{self, NodeConfig};
use tern_runtime::EngineKind;

/// Run a node agent: measure this machine's compute under the node's engine, join the
/// continuum over NATS, run the apps the control plane places here (each in a process
/// of its own), and say it is alive with a heartbeat twice a second. On Ctrl-C or
/// SIGTERM it checkpoints its migratable apps and leaves. A node that dies or hangs
/// without leaving is declared lost by the control plane once it has been silent for
/// the control plane's --lost-after (4 s by default), and its apps start elsewhere; a
/// slow or absent backbone never ends a node or its apps.
#[derive(Debug, Args)]
pub struct NodeCommand {
    /// The node's name, unique in the continuum.
    #[arg(long, value_parser = node_name)]
    name: String,
    #[command(flatten)]
    nats: crate::common::NatsArgs,
    /// Where the node is; nodes of a site share its links [default: the node's name].
    #[arg(long, value_parser = site_name)]
    site: Option<String>,
    /// cloud, edge or iot.
    #[arg(long, default_value = "edge", value_parser = |s: &str| s.parse::<Tier>())]
    tier: Tier,
    /// Engine the node runs guests on: cranelift or pulley.
    #[arg(long, value_parser = crate::common::parse_engine, default_value = "cranelift")]
    engine: EngineKind,
    /// Cores the node gives its instances [default: all of this machine's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    cores: Option<u32>,
    /// Memory the node gives its instances (`512MiB`, `2GiB`).
    #[arg(long, default_value = "1GiB", value_parser = crate::common::memory_size)]
    memory: u64,
    /// A label as KEY=VALUE, for manifests' constraints and affinities; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    labels: Vec<(String, String)>,
    /// Where the node listens for other nodes' pings (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    link_listen: std::net::SocketAddr,
    /// The address other nodes reach this node's link at, when not the one it listens
    /// on (behind NAT, or listening on 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    link_advertise: Option<String>,
    /// Emulate the network to the nodes of another site: SITE=RTT_MS/MBIT, e.g.
    /// `cloud=20/100` (20 ms round trip, 100 Mbit/s). Every byte to a node there (pings
    /// and migrations) goes through a relay that delays it and holds it to that rate;
    /// `tern up` sets these from its config. Repeatable.
    #[arg(long = "emulate-link", value_name = "SITE=RTT_MS/MBIT", value_parser = emulated_link)]
    links: Vec<(String, tern_cluster::emulate::Shape)>,
    /// Where the node keeps its instances' files (modules, volumes, checkpoints)
    /// [default: ~/.local/state/tern/nodes/NAME].
    #[arg(long, value_name = "DIR")]
    state: Option<std::path::PathBuf>,
}

fn node_name(s: &str) -> Result<String, String> {
    if tern_cluster::manifest::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a node name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

fn site_name(s: &str) -> Result<String, String> {
    if tern_cluster::manifest::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a site name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

fn emulated_link(s: &str) -> Result<(String, tern_cluster::emulate::Shape), String> {
    let bad = || format!("`{s}`: write an emulated link as SITE=RTT_MS/MBIT, e.g. cloud=20/100");
    let (site, shape) = s.split_once('=').ok_or_else(bad)?;
    let (rtt, mbit) = shape.split_once('/').ok_or_else(bad)?;
    let rtt: f64 = rtt.parse().map_err(|_| bad())?;
    let mbit: f64 = mbit.parse().map_err(|_| bad())?;
    if site.is_empty() || !(0.0..=10_000.0).contains(&rtt) || !(0.001..=100_000.0).contains(&mbit) {
        return Err(bad());
    }
    Ok((
        site.to_owned(),
        tern_cluster::emulate::Shape::of_rtt(rtt, mbit),
    ))
}

fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}`: write a label as KEY=VALUE")),
    }
}

impl NodeCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let cores = self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
        });
        let state = self.state.unwrap_or_else(|| {
            tern_cluster::up::default_state()
                .join("nodes")
                .join(&self.name)
        });
        let config = NodeConfig {
            site: self.site.unwrap_or_else(|| self.name.clone()),
            name: self.name,
            tier: self.tier,
            engine: self.engine,
            cores,
            memory: self.memory,
            labels: self.labels.into_iter().collect::<BTreeMap<_, _>>(),
            link_listen: self.link_listen,
            link_advertise: self.link_advertise,
            state,
            tern: std::env::current_exe()?,
            links: self.links.into_iter().collect(),
        };
        let runtime = crate::common::runtime()?;
        runtime.block_on(async move {
            let stop = crate::common::stopped();
            let backbone = self.nats.backbone().await?;
            let name = config.name.clone();
            agent::run(config, &backbone, stop, |node| {
                eprintln!(
                    "node {} joined {}: {} {}, {} on {}, {} cores, {} MiB, compute score {:.0}",
                    node.name,
                    self.nats.nats,
                    node.tier,
                    node.site,
                    node.engine,
                    node.arch,
                    node.cores,
                    node.memory >> 20,
                    node.compute_score
                );
            })
            .await?;
            eprintln!("node {name} left");
            Ok(ExitCode::SUCCESS)
        })
    }
}
