#![doc = include_str!("../README.md")]

pub mod nats;
pub mod sign;

pub use sign::{PublicKey, Signatures, SigningKey, TrustError, check_module};
