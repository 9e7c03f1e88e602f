#![doc = include_str!("../README.md")]

mod artifact;
mod atomic;
mod engine;
mod errno;
mod limits;
mod policy;
mod run;
mod stdio;

use std::path::PathBuf;

pub use artifact::{
    ArtifactCache, CacheOutcome, LoadedModule, ModuleFormat, detect_format, digest, load_module,
    precompile, wasm_binary,
};
pub use atomic::write_atomically;
pub use engine::{DEFAULT_MAX_STACK, Engine, EngineKind, EngineOptions};
pub use errno::wasi_errno_text;
pub use limits::{
    DEFAULT_MAX_TABLE_ELEMENTS, Dur, LimitExceeded, Limits, Size, parse_duration, parse_size,
};
pub use policy::{DirAccess, Policy, Preopen};
pub use run::{Host, Outcome, Program, RemoteFlag, Session};
pub use stdio::StdioTap;

/// Why the runtime could not start or set up a guest. What a guest does once running
/// is an [`Outcome`], not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("unknown engine `{0}` (expected cranelift or pulley)")]
    UnknownEngine(String),
    #[error("cannot set up the engine: {reason}")]
    Engine { reason: String },
    #[error("invalid {what} `{text}`: expected {expected}")]
    InvalidValue {
        what: &'static str,
        text: String,
        expected: &'static str,
    },
    #[error("cannot read module {}: {io}", path.display())]
    ReadModule { path: PathBuf, io: std::io::Error },
    #[error("{} is not a WebAssembly module or Tern artifact: {reason}", path.display())]
    BadModule { path: PathBuf, reason: String },
    #[error("{} does not compile: {reason}", path.display())]
    Compile { path: PathBuf, reason: String },
    #[error("artifact {} cannot run on this engine: {reason}; {hint}", path.display())]
    IncompatibleArtifact {
        path: PathBuf,
        reason: String,
        hint: &'static str,
    },
    #[error("artifact {} is corrupt, nothing was loaded: {reason}; recompile it with `tern compile`", path.display())]
    CorruptArtifact { path: PathBuf, reason: String },
    #[error("module is not a WASI command: {reason}")]
    NotACommand { reason: String },
    #[error(
        "module cannot be linked: {reason} (Tern provides the wasi_snapshot_preview1 imports only)"
    )]
    Link { reason: String },
    #[error("cannot preopen directory {}: {reason}", path.display())]
    Preopen { path: PathBuf, reason: String },
    #[error("a fuel budget needs an engine built with fuel metering")]
    FuelNeedsFuelEngine,
    #[error("a timeout needs an engine built with `interruptible` (epoch checks)")]
    TimeoutNeedsInterruptibleEngine,
}
