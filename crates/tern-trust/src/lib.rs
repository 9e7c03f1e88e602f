#![doc = include_str!("../README.md")]

pub mod sign;

pub use sign::{PublicKey, Signatures, SigningKey, TrustError, check_module};
