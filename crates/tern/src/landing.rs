//! Flags shared by the commands that bring a guest back to life on this machine
//! (`tern restore`, `tern receive`): where its volumes land, which engine runs it and
//! within which limits.

use std::path::PathBuf;

use clap::Args;
use tern_runtime::{Engine, EngineKind, EngineOptions, Limits, Preopen};
use tern_snapshot::Rewriter;

use crate::common::{memory_size, read_only_dir, read_write_dir, stack_size};

#[derive(Debug, Args)]
pub struct LandingArgs {
    /// Map a volume of the guest to a host directory, read-write (HOST::GUEST, where
    /// GUEST is the path the guest knew it by). Repeatable.
    #[arg(long = "dir", value_name = "HOST::GUEST", value_parser = read_write_dir)]
    dirs: Vec<Preopen>,

    /// Map a volume read-only. Repeatable.
    #[arg(long = "ro-dir", value_name = "HOST::GUEST", value_parser = read_only_dir)]
    ro_dirs: Vec<Preopen>,

    /// Execution engine: cranelift (native code) or pulley (portable interpreter),
    /// whichever engine the guest ran under before.
    #[arg(long, value_name = "ENGINE", value_parser = crate::common::parse_engine, default_value = "cranelift")]
    engine: EngineKind,

    /// Cap on the guest's linear memory, e.g. 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = memory_size)]
    max_memory: Option<u64>,

    /// Bound on the native stack used by Wasm frames, from 16KiB to 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = stack_size, default_value = "512KiB")]
    pub max_stack: usize,

    /// Do not read or write the cache of rewritten modules.
    #[arg(long)]
    no_cache: bool,

    /// Cache directory [default: as for `tern run`].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl LandingArgs {
    pub fn engine(&self) -> anyhow::Result<Engine> {
        Ok(Engine::new(EngineOptions {
            kind: self.engine,
            max_stack: self.max_stack,
            ..EngineOptions::default()
        })?)
    }

    pub fn rewriter(&self) -> Rewriter {
        Rewriter::new(
            crate::common::cache_root(self.no_cache, self.cache_dir.as_deref())
                .map(|d| d.join("migratable")),
        )
    }

    /// The volume mappings, each checked to be a directory.
    pub fn dirs(&self) -> anyhow::Result<Vec<Preopen>> {
        let dirs: Vec<Preopen> = self.dirs.iter().chain(&self.ro_dirs).cloned().collect();
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
            max_memory: self.max_memory,
            ..Limits::default()
        }
    }
}
