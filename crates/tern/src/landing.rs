//! Flags shared by the commands that bring a guest back to life on this machine
//! (`tern restore`, `tern receive`): where its volumes land, which engine runs it and
//! within which limits.

use clap::Args;
use tern_runtime::{Engine, EngineOptions, Limits, Preopen};
use tern_snapshot::Rewriter;

use crate::common::{DirArgs, EngineArgs};

#[derive(Debug, Args)]
pub struct LandingArgs {
    #[command(flatten)]
    dirs: DirArgs,

    #[command(flatten)]
    pub engine: EngineArgs,
}

impl LandingArgs {
    pub fn engine(&self) -> anyhow::Result<Engine> {
        Ok(Engine::new(EngineOptions {
            kind: self.engine.engine,
            max_stack: self.engine.max_stack,
            ..EngineOptions::default()
        })?)
    }

    pub fn rewriter(&self) -> Rewriter {
        Rewriter::new(self.engine.cache_root().map(|d| d.join("migratable")))
    }

    /// The volume mappings, each checked to be a directory.
    pub fn dirs(&self) -> anyhow::Result<Vec<Preopen>> {
        let dirs = self.dirs.all();
        for d in &dirs {
            if !d.host.exists() {
                anyhow::bail!("--dir {}: it does not exist", d.host.display());
            }
            if !d.host.is_dir() {
                anyhow::bail!("--dir {}: not a directory", d.host.display());
            }
        }
        Ok(dirs)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_memory: self.engine.max_memory,
            ..Limits::default()
        }
    }
}
