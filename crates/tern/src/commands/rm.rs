//! `tern rm`: remove a deployed app.

use std::process::ExitCode;

use clap::Args;

use crate::api::ApiArgs;

/// Remove an app: its node stops it at once, and its files and output are forgotten.
#[derive(Debug, Args)]
pub struct RmCommand {
    /// The app's name.
    #[arg(value_name = "APP")]
    app: String,
    #[command(flatten)]
    api: ApiArgs,
}

impl RmCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let _: serde_json::Value = self.api.delete(&format!("/v1/apps/{}", self.app))?;
        println!("removed {}", self.app);
        Ok(ExitCode::SUCCESS)
    }
}
