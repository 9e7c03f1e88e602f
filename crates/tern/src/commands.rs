//! One module per subcommand; each is a clap `Args` struct with `execute`.

pub mod bench;
pub mod checkpoint;
pub mod compile;
pub mod landing;
pub mod receive;
pub mod restore;
pub mod run;

use tern_runtime::{EngineKind, RuntimeError};

/// Parses `--engine`.
pub fn parse_engine(s: &str) -> Result<EngineKind, RuntimeError> {
    s.parse()
}

/// The artifact cache directory the flags ask for: none with `--no-cache`, else
/// `--cache-dir` or the default.
pub fn cache_root(
    no_cache: bool,
    cache_dir: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    if no_cache {
        return None;
    }
    cache_dir
        .map(std::path::Path::to_path_buf)
        .or_else(tern_runtime::ArtifactCache::default_dir)
}
