//! `tern explain`: why an app runs where it does, and why not elsewhere.

use std::process::ExitCode;

use clap::Args;

use crate::api::{ApiArgs, print_table, verdict_row};

/// Explain an app's placement as the scheduler sees it now: every node, best first,
/// with each part of its score, or every filter that rejects it.
#[derive(Debug, Args)]
pub struct ExplainCommand {
    /// The app's name.
    #[arg(value_name = "APP")]
    app: String,
    /// Only this node's answer: why the app is not there.
    #[arg(long, value_name = "NODE")]
    why_not: Option<String>,
    /// Print the explanation as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl ExplainCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut path = format!("/v1/apps/{}/explain", self.app);
        if let Some(n) = &self.why_not {
            path.push_str(&format!("?why_not={n}"));
        }
        let e: serde_json::Value = self.api.get(&path)?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&e)?);
            return Ok(ExitCode::SUCCESS);
        }
        let node = e["node"].as_str().unwrap_or("no node");
        println!(
            "{} runs on {node}: {}",
            self.app,
            e["note"].as_str().unwrap_or_default()
        );
        if self.why_not.is_none() {
            match e["chosen"].as_str() {
                Some(c) if c == node => println!("the scheduler would choose {c} again"),
                Some(c) => println!("the scheduler would choose {c} now"),
                None => println!("no node could take it now"),
            }
        }
        let nodes = e["nodes"].as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<String>> = nodes.iter().map(verdict_row).collect();
        print_table(&["NODE", "VERDICT", "SCORE", "WHY"], &rows);
        Ok(ExitCode::SUCCESS)
    }
}
