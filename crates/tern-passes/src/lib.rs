#![doc = include_str!("../README.md")]

mod bounded;
pub mod builtins;
pub mod instrument;
mod liveness;
mod outline;
pub mod unwind;
pub mod vectorize;

#[cfg(test)]
mod test_support;

/// Changes whenever the migratable rewrite's output for the same input changes.
pub const REWRITE_VERSION: u32 = 7;

/// The source of the passes of the migratable rewrite: with [`REWRITE_VERSION`] it keys
/// every cache of rewritten modules, so a Tern whose rewrite changed never reuses a
/// module an older one rewrote, even if the version was not bumped.
pub const MIGRATABLE_SOURCES: [&str; 5] = [
    builtins::IDENTITY,
    instrument::IDENTITY,
    unwind::IDENTITY,
    include_str!("liveness.rs"),
    include_str!("bounded.rs"),
];

/// The migratable rewrite: the libc fast paths ([`builtins`]), then the pre-pass
/// ([`instrument`]), which puts safe points at loop headers and before every import
/// call, then the unwind pass ([`unwind`]), which lets every call that can reach a safe
/// point unwind the call stack into linear memory and rewind it later.
///
/// The fast paths come first, so that a long `memcpy` is one `memory.copy` rather than
/// a loop with a safe point in it; the module's own loops stay interruptible.
///
/// # Errors
/// [`PassError`] when `wasm` is not a valid module or uses what a snapshot cannot carry.
pub fn migratable(wasm: &[u8]) -> Result<Vec<u8>, PassError> {
    let wasm = builtins::apply(wasm);
    let (instrumented, safepoint) = instrument::instrument_with_safepoint(&wasm)?;
    unwind::unwindable(&instrumented, safepoint)
}

/// Why a pass could not rewrite a module. The passes that only speed a module up
/// ([`builtins`], [`vectorize`]) never fail: they leave a module they cannot handle as
/// it is. Each variant's text is the reason alone, for a caller to put after its own
/// context ("module cannot be made migratable: …").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PassError {
    /// The input does not parse or validate as a core WebAssembly module.
    #[error("{reason}")]
    Invalid { reason: String },
    /// The module uses what the rewrite cannot carry through a checkpoint: a component,
    /// exception handling, a 64-bit memory, an imported mutable global, data on the poll
    /// flag, tail calls, a reference-typed value live at a safe point, names the rewrite
    /// adds.
    #[error("{reason}")]
    Unsupported { reason: String },
    /// A pass produced a module that does not validate or re-encode: a defect in Tern,
    /// never the input's fault.
    #[error("{reason}")]
    Defect { reason: String },
}

pub(crate) fn invalid(reason: impl std::fmt::Display) -> PassError {
    PassError::Invalid {
        reason: reason.to_string(),
    }
}

pub(crate) fn refuse(reason: impl Into<String>) -> PassError {
    PassError::Unsupported {
        reason: reason.into(),
    }
}

pub(crate) fn defect(reason: impl Into<String>) -> PassError {
    PassError::Defect {
        reason: reason.into(),
    }
}
