//! One module per verb; each is a clap `Args` struct with `execute`. No verb imports
//! another: what they share is in `crate::common`, `crate::checkpoint` and
//! `crate::landing`.

pub mod bench;
pub mod compile;
pub mod controller;
pub mod cp;
pub mod deploy;
pub mod drain;
pub mod explain;
pub mod instance;
pub mod logs;
pub mod migrate;
pub mod node;
pub mod nodes;
pub mod plan;
pub mod ps;
pub mod receive;
pub mod restore;
pub mod rm;
pub mod run;
pub mod sign;
pub mod up;
