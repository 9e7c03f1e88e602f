//! `tern instance`: one instance of a deployed app, started by its node agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Run one instance of a deployed app, as its node agent asks (not for direct use:
/// `tern deploy` puts apps on nodes, and each node starts its instances this way).
#[derive(Debug, Args)]
pub struct InstanceCommand {
    /// The instance's spec, written by its node agent.
    #[arg(value_name = "SPEC")]
    spec: PathBuf,
}

impl InstanceCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let status = tern_cluster::instance::run(&self.spec);
        Ok(ExitCode::from(u8::try_from(status & 0xff).unwrap_or(1)))
    }
}
