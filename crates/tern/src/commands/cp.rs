//! `tern cp`: copy a file out of an app's volumes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::api::ApiArgs;

/// Copy a file of an app's volumes (running or finished) to this machine, from the
/// node that has it: `tern cp APP:/guest/path LOCAL` (LOCAL `-` for stdout).
#[derive(Debug, Args)]
pub struct CpCommand {
    /// The app and the file's path as the guest sees it, e.g. `sensor-agg:/data/out.csv`.
    #[arg(value_name = "APP:/PATH")]
    source: String,
    /// Where to write it (a file, a directory, or `-` for stdout).
    #[arg(value_name = "LOCAL")]
    target: PathBuf,
    #[command(flatten)]
    api: ApiArgs,
}

impl CpCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let Some((app, path)) = self
            .source
            .split_once(':')
            .filter(|(a, p)| !a.is_empty() && p.starts_with('/'))
        else {
            anyhow::bail!(
                "`{}`: write the source as APP:/guest/path, e.g. sensor-agg:/data/out.csv",
                self.source
            );
        };
        let query: String = path
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let bytes = self
            .api
            .get_bytes(&format!("/v1/apps/{app}/files?path={query}"))?;
        if self.target.as_os_str() == "-" {
            std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
            return Ok(ExitCode::SUCCESS);
        }
        let target = if self.target.is_dir() {
            self.target.join(path.rsplit('/').next().unwrap_or(app))
        } else {
            self.target.clone()
        };
        tern_runtime::write_atomically(&target, &bytes)
            .with_context(|| format!("writing {}", target.display()))?;
        eprintln!("{} bytes to {}", bytes.len(), target.display());
        Ok(ExitCode::SUCCESS)
    }
}
