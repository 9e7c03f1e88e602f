//! Integration tests of the `tern` binary on real C guests built by clang-19 with
//! wasi-libc (see `guests/`). One test binary, one module per area.

mod bench;
mod cache;
mod checkpoint;
mod compile;
mod continuum;
mod controller;
mod errors;
mod faults;
mod identity;
mod limits;
mod migrate;
mod moves;
mod netns;
mod node;
mod run;
mod sandbox;
mod signing;
mod support;
mod up;
