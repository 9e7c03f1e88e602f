//! `tern deploy`: upload an app's module and seed files and have the control plane
//! place it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tern_cluster::apps::SeedFile;
use tern_cluster::control::{DeployRequest, Deployed};
use tern_cluster::manifest::ModuleRef;

use crate::api::ApiArgs;

/// Deploy an app: check its manifest, upload its module (and the files that seed its
/// volumes), and let the control plane place it on the best node, which starts it.
/// `tern ps` shows it, `tern logs` its output, `tern explain` why it is where it is.
#[derive(Debug, Args)]
pub struct DeployCommand {
    /// The deployment manifest (TOML); its `module` and `seed` paths are relative to it.
    #[arg(value_name = "FILE.toml")]
    manifest: PathBuf,
    /// The module's signature file [default: the module's path and `.sig`, when it
    /// exists]; a manifest with `signed_by` needs one.
    #[arg(long, value_name = "FILE")]
    sig: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// Seed files one volume may have at most.
const MAX_SEED_FILES: usize = 10_000;

impl DeployCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let text = std::fs::read_to_string(&self.manifest)
            .with_context(|| format!("cannot read {}", self.manifest.display()))?;
        let m = tern_cluster::manifest::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.manifest.display()))?;
        let base = self
            .manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let (module, beside) = match &m.module {
            ModuleRef::Digest(d) => (d.clone(), None),
            ModuleRef::Path(p) => {
                let path = base.join(p);
                let wasm = crate::common::read_wasm(&path)?;
                (
                    self.upload(&wasm)?,
                    Some(super::sign::signature_path(&path)),
                )
            }
        };
        let signatures = match (&self.sig, beside) {
            (Some(path), _) => Some(
                super::sign::read_signatures(path)?
                    .with_context(|| format!("{} does not exist", path.display()))?,
            ),
            (None, Some(path)) => super::sign::read_signatures(&path)?,
            (None, None) => None,
        };
        let mut seeds = Vec::new();
        for v in &m.volumes {
            let Some(dir) = &v.seed else { continue };
            let dir = base.join(dir);
            for (rel, path) in files_under(&dir)? {
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                seeds.push(SeedFile {
                    volume: v.guest.clone(),
                    path: rel,
                    digest: self.upload(&bytes)?,
                });
            }
        }
        let request = DeployRequest {
            manifest: text,
            module,
            seeds,
            signatures,
        };
        let deployed: Deployed = self.api.post(
            "/v1/apps",
            "application/json",
            &serde_json::to_vec(&request)?,
        )?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&deployed)?);
        } else if deployed.note.starts_with("deployed already") {
            println!("{}: {}", deployed.name, deployed.note);
        } else if deployed.note.starts_with("placed on") {
            println!(
                "deployed {} on {}; `tern logs {}` shows its output",
                deployed.name, deployed.node, deployed.name
            );
        } else {
            // Replicas: each is an app of its own.
            println!(
                "deployed {}: {}; `tern ps` lists them",
                deployed.name, deployed.note
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    fn upload(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let max = tern_cluster::control::MAX_MODULE;
        anyhow::ensure!(
            bytes.len() <= max,
            "{}: a module or seed file of {} MiB is over the {} MiB the continuum takes",
            self.manifest.display(),
            bytes.len().div_ceil(1 << 20),
            max >> 20
        );
        let digest = tern_runtime::digest(bytes);
        let _: serde_json::Value = self.api.put(&format!("/v1/modules/{digest}"), bytes)?;
        Ok(digest)
    }
}

/// The regular files under `dir`, with their paths relative to it (`/`-separated).
fn files_under(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("seed {}: cannot read", d.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("seed {}", d.display()))?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                todo.push(path);
            } else if kind.is_file() {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, path));
            }
        }
        anyhow::ensure!(
            out.len() <= MAX_SEED_FILES,
            "seed {}: more than {MAX_SEED_FILES} files",
            dir.display()
        );
    }
    out.sort();
    Ok(out)
}
