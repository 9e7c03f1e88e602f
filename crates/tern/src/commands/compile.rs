//! `tern compile`: precompile a module ahead of time, for this machine or another.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{
    Engine, EngineKind, EngineOptions, Size, detect_format, precompile, wasm_binary,
};

/// Compile a module ahead of time to an artifact (`.cwasm`) that `tern run` loads
/// without compiling. With --target, compile for another architecture: the cloud
/// compiles, the edge only loads.
#[derive(Debug, Args)]
pub struct CompileCommand {
    /// Module to compile: a Wasm binary or WebAssembly text.
    #[arg(value_name = "MODULE")]
    module: PathBuf,

    /// Target triple, e.g. aarch64-unknown-linux-gnu, x86_64-unknown-linux-gnu,
    /// riscv64gc-unknown-linux-gnu [default: this machine].
    #[arg(long, value_name = "TRIPLE")]
    target: Option<String>,

    /// Output file [default: MODULE with the extension .cwasm].
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,

    /// Engine the artifact is for: cranelift (native code) or pulley (portable bytecode,
    /// runs on any architecture with `tern run --engine pulley`).
    #[arg(long, value_name = "ENGINE", value_parser = crate::common::parse_engine, default_value = "cranelift")]
    engine: EngineKind,

    /// Compile in fuel metering, for `tern run --fuel`.
    #[arg(long)]
    fuel: bool,

    /// Compile in deadline checks, for `tern run --timeout`.
    #[arg(long)]
    interruptible: bool,

    /// Compile the guest's libc `memcpy`, `memmove`, `memset`, `memcmp` and `strlen` as
    /// written, without Tern's fast paths (see `tern run --keep-libc`).
    #[arg(long)]
    keep_libc: bool,

    /// Compile loops as written, without Tern's loop vectoriser (see `tern run
    /// --no-vectorize`).
    #[arg(long)]
    no_vectorize: bool,
}

impl CompileCommand {
    pub fn execute(self) -> anyhow::Result<()> {
        if self.engine == EngineKind::Pulley && self.target.is_some() {
            anyhow::bail!(
                "--target and --engine pulley exclude each other: Pulley bytecode runs on every target"
            );
        }
        let engine = Engine::new(EngineOptions {
            kind: self.engine,
            target: self.target.clone(),
            fuel: self.fuel,
            interruptible: self.interruptible,
            libc_builtins: !self.keep_libc,
            vectorize: !self.no_vectorize,
            ..EngineOptions::default()
        })?;
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("cannot read module {}", self.module.display()))?;
        let format = detect_format(&self.module, &bytes)?;
        let wasm = wasm_binary(&self.module, &bytes, format)?;
        let artifact = precompile(&engine, &self.module, &wasm)?;
        let out = self
            .output
            .clone()
            .unwrap_or_else(|| self.module.with_extension("cwasm"));
        if out == self.module {
            anyhow::bail!(
                "output {} would overwrite the module; pass -o",
                out.display()
            );
        }
        std::fs::write(&out, &artifact)
            .with_context(|| format!("cannot write artifact {}", out.display()))?;
        println!(
            "{} -> {} ({}, {}, {})",
            self.module.display(),
            out.display(),
            engine.target(),
            self.engine,
            Size(artifact.len() as u64)
        );
        Ok(())
    }
}
