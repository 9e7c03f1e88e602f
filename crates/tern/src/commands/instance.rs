//! `tern instance`: one instance of a deployed app, started by its node agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Run one instance of a deployed app, as its node agent asks (not for direct use:
/// `tern deploy` puts apps on nodes, and each node starts its instances this way).
#[derive(Debug, Args)]
pub struct InstanceCommand {
    /// The instance's spec, written by its node agent.
    #[arg(value_name = "SPEC", required_unless_present = "measure")]
    spec: Option<PathBuf>,
    /// Instead, measure this machine's compute score under --engine, --cores and
    /// --memory, and print it (a node agent does this when it joins).
    #[arg(long)]
    measure: bool,
    #[arg(long, requires = "measure", value_parser = crate::common::parse_engine, default_value = "cranelift")]
    engine: tern_runtime::EngineKind,
    #[arg(long, requires = "measure", default_value_t = 1)]
    cores: u32,
    #[arg(long, requires = "measure", default_value_t = 1 << 30)]
    memory: u64,
}

impl InstanceCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let Some(spec) = self.spec.filter(|_| !self.measure) else {
            let score = tern_cluster::agent::measure_compute(self.engine, self.cores, self.memory)?;
            println!("{score}");
            return Ok(ExitCode::SUCCESS);
        };
        let status = tern_cluster::instance::run(&spec);
        Ok(ExitCode::from(u8::try_from(status & 0xff).unwrap_or(1)))
    }
}
