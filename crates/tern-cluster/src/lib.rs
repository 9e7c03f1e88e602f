#![doc = include_str!("../README.md")]

pub mod agent;
pub mod apps;
pub mod backbone;
pub mod control;
pub mod emulate;
pub mod identity;
pub mod instance;
pub mod link;
pub mod manifest;
pub mod model;
pub mod moves;
pub mod protocol;
pub mod scheduler;
pub mod supervisor;
pub mod tunnel;
pub mod up;

pub use manifest::{Manifest, ManifestError};
pub use model::{InstanceState, NodeDescriptor, NodeLoad, Tee, Tier};
pub use scheduler::{
    Explanation, Rejection, Request, RttMatrix, Scheduler, Score, Verdict, Weights,
};
