//! One module per verb; each is a clap `Args` struct with `execute`. No verb imports
//! another: what they share is in `crate::common`, `crate::checkpoint` and
//! `crate::landing`.

pub mod bench;
pub mod compile;
pub mod controller;
pub mod node;
pub mod nodes;
pub mod plan;
pub mod receive;
pub mod restore;
pub mod run;
pub mod up;
