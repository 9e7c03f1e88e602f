#![doc = include_str!("../README.md")]

pub mod cluster;
pub mod continuum;
pub mod durability;
pub mod fleet;
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
