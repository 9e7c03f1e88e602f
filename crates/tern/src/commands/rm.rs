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
        let answer: serde_json::Value = self.api.delete(&format!("/v1/apps/{}", self.app))?;
        // Every app it removed: the app of that name, its replicas, or both.
        let removed: Vec<&str> = answer["removed"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
            .unwrap_or_default();
        println!(
            "removed {}",
            if removed.is_empty() {
                self.app.clone()
            } else {
                removed.join(", ")
            }
        );
        Ok(ExitCode::SUCCESS)
    }
}
