//! `tern nodes`: the nodes of the continuum, as the control plane sees them.

use std::process::ExitCode;

use clap::Args;
use tern_cluster::control::{NodeView, SiteRtt};

use crate::api::{ApiArgs, print_table};

/// List the nodes in the continuum: whether each takes apps (`ready`) or is drained,
/// tier, site, engine, what each measured of its compute, and its load.
#[derive(Debug, Args)]
pub struct NodesCommand {
    /// Print a JSON array of nodes (name, tier, arch, compute_score, drained, …).
    #[arg(long)]
    json: bool,
    /// Show the round trips measured between sites instead.
    #[arg(long)]
    latency: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl NodesCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if self.latency {
            let pairs: Vec<SiteRtt> = self.api.get("/v1/latency")?;
            if self.json {
                println!("{}", serde_json::to_string_pretty(&pairs)?);
            } else if pairs.is_empty() {
                eprintln!(
                    "no round trip measured yet: nodes ping each other twice a second once two have joined"
                );
            } else {
                let rows: Vec<Vec<String>> = pairs
                    .iter()
                    .map(|p| vec![p.a.clone(), p.b.clone(), format!("{:.2} ms", p.ms)])
                    .collect();
                print_table(&["SITE", "SITE", "RTT"], &rows);
            }
            return Ok(ExitCode::SUCCESS);
        }
        let nodes: Vec<NodeView> = self.api.get("/v1/nodes")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&nodes)?);
            return Ok(ExitCode::SUCCESS);
        }
        if nodes.is_empty() {
            eprintln!("no node has joined yet; start one with `tern node --name NAME`");
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|v| {
                let n = &v.node;
                vec![
                    n.name.clone(),
                    if v.drained { "drained" } else { "ready" }.to_owned(),
                    n.tier.to_string(),
                    n.site.clone(),
                    n.engine.to_string(),
                    n.arch.clone(),
                    n.cores.to_string(),
                    format!("{} MiB", n.memory >> 20),
                    format!("{:.0}", n.compute_score),
                    n.load.instances.to_string(),
                    format!("{:.2}", n.load.cpu),
                    format!("{} MiB", n.load.used >> 20),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "STATE",
                "TIER",
                "SITE",
                "ENGINE",
                "ARCH",
                "CORES",
                "MEMORY",
                "COMPUTE",
                "INSTANCES",
                "CPU",
                "USED",
            ],
            &rows,
        );
        Ok(ExitCode::SUCCESS)
    }
}
