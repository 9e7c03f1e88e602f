//! `tern drain`: empty a node.

use std::process::ExitCode;

use clap::Args;
use tern_cluster::moves::{MoveRecord, MoveState};

use crate::api::{ApiArgs, print_table};

/// Drain a node: no app is placed on it any more, and every app on it moves: live when
/// it is migratable and running, else restarted on another node (from its last
/// checkpoint, if it has one). The moves are recorded and carried out by the control
/// plane, a few at a time: the command answers at once with them (`tern ps` shows
/// them under way), or with --wait follows them to their end and lists how each was
/// made (exit 3 if any app stayed).
#[derive(Debug, Args)]
pub struct DrainCommand {
    /// The node to drain.
    #[arg(value_name = "NODE")]
    node: String,
    /// Take the node back instead: apps may be placed on it again.
    #[arg(long)]
    undo: bool,
    /// Follow the moves to their end (up to 10 minutes).
    #[arg(long)]
    wait: bool,
    /// Print the moves as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl DrainCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let path = format!("/v1/nodes/{}/drain", self.node);
        if self.undo {
            let _: serde_json::Value = self.api.delete(&path)?;
            println!("{} takes apps again", self.node);
            return Ok(ExitCode::SUCCESS);
        }
        let asked: Vec<MoveRecord> = self.api.post(&path, "application/json", b"")?;
        let moves = if self.wait {
            let apps: Vec<String> = asked.iter().map(|m| m.app.clone()).collect();
            self.api.follow_moves(&apps)?
        } else {
            asked
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&moves)?);
        } else if moves.is_empty() {
            println!("{} is drained; no app was on it", self.node);
        } else {
            println!("{} is drained:", self.node);
            let rows: Vec<Vec<String>> = moves
                .iter()
                .map(|m| {
                    let how = match (&m.state, m.live) {
                        (MoveState::Done, true) => "migrated",
                        (MoveState::Done, false) => "restarted",
                        (MoveState::Failed, _) => "stayed",
                        (_, true) => "moving live",
                        (_, false) => "restarting",
                    };
                    vec![
                        m.app.clone(),
                        m.id.clone(),
                        how.into(),
                        m.to.clone().unwrap_or_else(|| "—".into()),
                        m.note.clone(),
                    ]
                })
                .collect();
            print_table(&["APP", "MOVE", "HOW", "TO", "NOTE"], &rows);
        }
        let stayed = moves
            .iter()
            .filter(|m| m.state == MoveState::Failed)
            .count();
        Ok(if stayed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        })
    }
}
