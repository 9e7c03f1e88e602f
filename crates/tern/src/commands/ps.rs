//! `tern ps`: the deployed apps and what their instances are doing.

use std::process::ExitCode;

use clap::Args;
use tern_cluster::apps::AppView;

use crate::api::{ApiArgs, print_table};

/// List the deployed apps: the node each runs on, its state (pending, placed, running,
/// migrating, exited, failed), its restarts, the age of its last checkpoint, its move
/// under way if any (`→ cloud (copying, agg#2)`) and the last thing that happened to
/// it.
#[derive(Debug, Args)]
pub struct PsCommand {
    /// Print a JSON array of apps (name, node, state, code, reason, restarts, …).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl PsCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let apps: Vec<AppView> = self.api.get("/v1/apps")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&apps)?);
            return Ok(ExitCode::SUCCESS);
        }
        if apps.is_empty() {
            eprintln!("no app is deployed; deploy one with `tern deploy app.toml`");
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = apps
            .iter()
            .map(|a| {
                let state = match (&a.code, &a.reason) {
                    (Some(c), _) => format!("{} ({c})", a.state),
                    _ => a.state.clone(),
                };
                vec![
                    a.name.clone(),
                    a.node.clone().unwrap_or_else(|| "—".into()),
                    state,
                    a.restarts.to_string(),
                    a.checkpoint_age_s
                        .map_or_else(|| "—".into(), |s| format!("{s:.0} s ago")),
                    a.moving.clone().unwrap_or_else(|| "—".into()),
                    a.note.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "NODE",
                "STATE",
                "RESTARTS",
                "CHECKPOINT",
                "MOVE",
                "NOTE",
            ],
            &rows,
        );
        Ok(ExitCode::SUCCESS)
    }
}
