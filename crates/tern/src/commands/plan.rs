//! `tern plan`: where a deployment would go, and why, without deploying it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tern_cluster::control::Plan;

use crate::api::{ApiArgs, print_table, verdict_row};

/// Show where a deployment would be placed, without deploying anything: every node,
/// best first, with its score, or every filter that rejected it.
#[derive(Debug, Args)]
pub struct PlanCommand {
    /// The deployment manifest (TOML).
    #[arg(value_name = "FILE.toml")]
    manifest: PathBuf,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl PlanCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let text = std::fs::read_to_string(&self.manifest)
            .with_context(|| format!("cannot read {}", self.manifest.display()))?;
        // Checked here first, so the error names the file.
        tern_cluster::manifest::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.manifest.display()))?;
        let plan: Plan = self
            .api
            .post("/v1/plan", "application/toml", text.as_bytes())?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
            return Ok(ExitCode::SUCCESS);
        }
        match &plan.chosen {
            Some(_) if !plan.replicas.is_empty() => {
                let each: Vec<String> = plan
                    .replicas
                    .iter()
                    .map(|(app, node)| format!("{app} to {node}"))
                    .collect();
                println!("would deploy {}", each.join(", "));
                println!("the first replica's verdicts:");
            }
            Some(n) => println!("would go to {n}"),
            None => println!("no node can take it: every node fails a filter"),
        }
        let rows: Vec<Vec<String>> = plan.nodes.iter().map(verdict_row).collect();
        print_table(&["NODE", "VERDICT", "SCORE", "WHY"], &rows);
        Ok(if plan.chosen.is_some() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        })
    }
}
