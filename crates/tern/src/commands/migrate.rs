//! `tern migrate`: move a running app to another node, live.

use std::process::ExitCode;

use clap::Args;
use tern_cluster::control::{MigrateRequest, Move};

use crate::api::ApiArgs;

/// Live-migrate a running app to another node: its memory and volume files are copied
/// while it runs, then it stops at a safe point, the last changes go over and it
/// resumes there. Its output goes on in `tern logs` with nothing lost or repeated. If
/// anything fails, it keeps running where it was.
#[derive(Debug, Args)]
pub struct MigrateCommand {
    /// The app's name.
    #[arg(value_name = "APP")]
    app: String,
    /// The node to move it to (it must pass the app's constraints).
    #[arg(long, value_name = "NODE")]
    to: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl MigrateCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let body = serde_json::to_vec(&MigrateRequest {
            to: self.to.clone(),
        })?;
        let moved: Move = self.api.post(
            &format!("/v1/apps/{}/migrate", self.app),
            "application/json",
            &body,
        )?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&moved)?);
        } else {
            println!("{}: {}", moved.name, moved.note);
        }
        Ok(ExitCode::SUCCESS)
    }
}
