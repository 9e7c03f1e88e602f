//! Exit codes of `tern` when it does not pass on the guest's own. All but one are below
//! 128 so that shells do not mistake them for signals; README.md lists them.

use tern_runtime::LimitExceeded;

/// Tern could not start the guest (bad module, missing file, bad flag value).
pub const TERN_ERROR: u8 = 1;
/// The guest hit its stack limit.
pub const STACK: u8 = 121;
/// The guest hit its memory or table limit.
pub const MEMORY: u8 = 122;
/// The guest used up its fuel budget.
pub const FUEL: u8 = 123;
/// The guest ran past its wall-clock timeout (as coreutils' `timeout`).
pub const TIMEOUT: u8 = 124;
/// The guest trapped.
pub const TRAP: u8 = 125;
/// The guest wrote to a closed pipe: 128 + SIGPIPE, what a shell reports for a native
/// process ended that way, so `set -o pipefail` scripts see the same status.
pub const BROKEN_PIPE: u8 = 141;

/// The exit code for a guest stopped by `limit`.
pub fn for_limit(limit: &LimitExceeded) -> u8 {
    match limit {
        LimitExceeded::Memory { .. } | LimitExceeded::Table { .. } => MEMORY,
        LimitExceeded::Timeout { .. } => TIMEOUT,
        LimitExceeded::Fuel { .. } => FUEL,
        LimitExceeded::Stack { .. } => STACK,
        _ => TRAP,
    }
}
