//! Integration tests of `tern-snapshot`. One test binary, one module per area.

mod differential;
mod guest_memory;
mod migration_errors;
mod precopy;
mod unwinding;
