//! `tern drain`: empty a node.

use std::process::ExitCode;

use clap::Args;
use tern_cluster::control::Move;

use crate::api::{ApiArgs, print_table};

/// Drain a node: no app is placed on it any more, and every app on it moves: live when
/// it is migratable and running, else restarted on another node (from its last
/// checkpoint, if it has one). Each move is listed with how it was made.
#[derive(Debug, Args)]
pub struct DrainCommand {
    /// The node to drain.
    #[arg(value_name = "NODE")]
    node: String,
    /// Take the node back instead: apps may be placed on it again.
    #[arg(long)]
    undo: bool,
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
        let moves: Vec<Move> = self.api.post(&path, "application/json", b"")?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&moves)?);
        } else if moves.is_empty() {
            println!("{} is drained; no app was on it", self.node);
        } else {
            println!("{} is drained:", self.node);
            let rows: Vec<Vec<String>> = moves
                .iter()
                .map(|m| vec![m.name.clone(), m.how.clone(), m.to.clone(), m.note.clone()])
                .collect();
            print_table(&["APP", "HOW", "TO", "NOTE"], &rows);
        }
        let stayed = moves.iter().filter(|m| m.how == "stayed").count();
        Ok(if stayed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(3)
        })
    }
}
