//! Tern's benchmark harness. It drives `tern-runtime` through its public API like any
//! embedder, and runs whole commands (native programs, `tern`, peer runtimes) as
//! processes, interleaved so that machine drift spreads over every runner alike.
//!
//! - [`stats`]: medians and spreads of samples.
//! - [`table`]: plain-text result tables.
//! - [`toolchain`]: building C programs natively and for `wasm32-wasi`.
//! - [`startup`]: `tern bench startup`, instantiation latency and process wall time.
//! - [`runner`]: native, Tern and peer runners.
//! - [`polybench`]: `tern bench polybench`.
//! - [`sqlite`]: `tern bench sqlite` (speedtest1).
//! - [`migration`]: `tern bench migration`, time to safe point, migratable-mode overhead,
//!   snapshot size and live-migration downtime by working set.
//! - [`report`]: suite results, ratio tables.

pub mod link;
pub mod migration;
pub mod plot;
pub mod polybench;
pub mod progress;
pub mod report;
pub mod runner;
pub mod sqlite;
pub mod startup;
pub mod stats;
pub mod table;
pub mod toolchain;
