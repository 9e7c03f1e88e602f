//! One module per subcommand; each is a clap `Args` struct with `execute`.

pub mod bench;
pub mod checkpoint;
pub mod compile;
pub mod restore;
pub mod run;

use tern_runtime::{EngineKind, RuntimeError};

/// Parses `--engine`.
pub fn parse_engine(s: &str) -> Result<EngineKind, RuntimeError> {
    s.parse()
}
