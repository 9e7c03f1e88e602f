//! `tern migrate`: move a running app to another node, live.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tern_cluster::control::MigrateRequest;
use tern_cluster::moves::{MoveRecord, MoveState};

use crate::api::ApiArgs;

/// Live-migrate an app to another node: its memory and volume files are copied while
/// it runs, then it stops at a safe point, the last changes go over and it resumes
/// there. Its output goes on in `tern logs` with nothing lost or repeated. If anything
/// fails, it keeps running where it was.
///
/// The move is recorded and carried out by the control plane, whatever happens to
/// this command: it answers at once with the move's id (`tern ps` shows the move under
/// way), or with --wait follows it to its end. An app that is still starting moves
/// once it runs.
#[derive(Debug, Args)]
pub struct MigrateCommand {
    /// The app's name.
    #[arg(value_name = "APP")]
    app: String,
    /// The node to move it to (it must pass the app's constraints).
    #[arg(long, value_name = "NODE")]
    to: String,
    /// Follow the move to its end (up to 10 minutes), and fail if it failed.
    #[arg(long)]
    wait: bool,
    /// Print the move as JSON.
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
        let asked: MoveRecord = self.api.post(
            &format!("/v1/apps/{}/migrate", self.app),
            "application/json",
            &body,
        )?;
        if !self.wait {
            if self.json {
                println!("{}", serde_json::to_string_pretty(&asked)?);
            } else {
                println!(
                    "{}: move {} asked, {} → {} (live); `tern ps` shows it, --wait follows it",
                    asked.app, asked.id, asked.from, self.to
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let done = self.api.follow_moves(std::slice::from_ref(&asked.app))?;
        let Some(mv) = done.into_iter().next() else {
            bail!("{} has no move", asked.app);
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&mv)?);
        }
        if mv.state == MoveState::Failed {
            bail!("{}", mv.note);
        }
        if !self.json {
            println!("{}: {}", mv.app, mv.note);
        }
        Ok(ExitCode::SUCCESS)
    }
}
