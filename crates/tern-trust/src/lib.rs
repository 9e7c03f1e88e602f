#![doc = include_str!("../README.md")]

pub mod nats;
pub mod sign;
pub mod tls;

pub use sign::{PublicKey, Signatures, SigningKey, TrustError, check_module};

/// Writes `text` to `path`, readable and writable by its owner only (mode 0600 from its
/// creation, so that no other user ever reads a secret there).
///
/// # Errors
/// When the file cannot be written.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}
