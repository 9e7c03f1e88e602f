//! Signed modules: ed25519 signatures over a module's SHA-256, kept in a detached file
//! next to the module (`app.wasm.sig`), and the policy of the keys a deployment requires.
//!
//! Detached rather than in a custom section: a module's bytes, and so its digest (which
//! names it in the object store and in every record), stay the same whether it is signed
//! and whoever signs it; several keys sign one module without changing it; and
//! `sha256sum app.wasm` prints the digest the signatures are for.
//!
//! What is signed is [`DOMAIN`] followed by the 32 bytes of the digest, so that a
//! signature made for a module can never pass for one made for anything else.

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// What a module signature signs, before the module's digest.
pub const DOMAIN: &[u8] = b"tern module signature v1\0";

/// The first line of a signing key's file.
const KEY_HEADER: &str = "tern signing key v1 ed25519";

/// The largest signature file read, and the most signatures one may hold: a file is
/// bounded before it is parsed.
pub const MAX_SIGNATURE_FILE: usize = 64 << 10;
const MAX_SIGNATURES: usize = 64;

/// Why a key, a signature or a module is refused: one line that names the cause.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the module is not signed, and its policy requires a signature by {required}")]
    Unsigned { required: PublicKey },
    #[error(
        "the module was changed after it was signed: its SHA-256 is {actual}, its signatures are for {signed}"
    )]
    Tampered { signed: String, actual: String },
    #[error("the signature by {key} does not verify: the module or its signature was altered")]
    BadSignature { key: PublicKey },
    #[error("the module is not signed by {key}, which its policy requires")]
    NotSignedBy { key: PublicKey },
    #[error("not a Tern signature file: {reason}")]
    Malformed { reason: String },
    #[error(
        "not a Tern public key ({text}): give one as ed25519:<64 hex digits>, as `tern keygen` prints it"
    )]
    PublicKey { text: String },
    #[error("{}: not a Tern signing key: {reason}", path.display())]
    SigningKey {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness for a new key: {reason}")]
    Random { reason: String },
}

/// A module's SHA-256, in hex, as records name it.
#[must_use]
pub fn digest(module: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(module))
}

/// The bytes a signature of the module with digest `digest` (hex) signs.
fn message(digest: &str) -> Option<Vec<u8>> {
    let raw = hex::decode(digest).ok().filter(|d| d.len() == 32)?;
    Some([DOMAIN, &raw].concat())
}

/// An ed25519 public key, written `ed25519:<64 hex digits>`: 32 bytes that were checked
/// to be a point of the curve when the key was read.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    fn verifying(&self) -> Option<ed25519_dalek::VerifyingKey> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = TrustError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || TrustError::PublicKey {
            text: text.chars().take(80).collect(),
        };
        let raw = text.trim().strip_prefix("ed25519:").ok_or_else(bad)?;
        let bytes: [u8; 32] = hex::decode(raw)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(|_| PublicKey(bytes))
            .map_err(|_| bad())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signing key, kept in a file of its own that only its owner reads.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public())
    }
}

impl SigningKey {
    /// A new key, from the operating system's randomness.
    ///
    /// # Errors
    /// [`TrustError::Random`] when the system gives no randomness.
    pub fn generate() -> Result<SigningKey, TrustError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| TrustError::Random {
            reason: e.to_string(),
        })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Its public half.
    #[must_use]
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Writes the key to `path`, a new file readable by its owner alone; an existing
    /// file is never overwritten.
    ///
    /// # Errors
    /// [`TrustError::Io`] when the file exists or cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), TrustError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let io = |source| TrustError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let text = format!(
            "{KEY_HEADER}\n{}\n{}\n",
            hex::encode(self.0.to_bytes()),
            self.public()
        );
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key that [`SigningKey::save`] wrote.
    ///
    /// # Errors
    /// [`TrustError::Io`] when the file cannot be read, [`TrustError::SigningKey`] when
    /// it holds no key.
    pub fn load(path: &Path) -> Result<SigningKey, TrustError> {
        let bad = |reason: &str| TrustError::SigningKey {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let meta = std::fs::metadata(path).map_err(|source| TrustError::Io {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() > 4096 {
            return Err(bad("it is larger than any key file"));
        }
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut lines = text.lines();
        if lines.next() != Some(KEY_HEADER) {
            return Err(bad(&format!("its first line is not `{KEY_HEADER}`")));
        }
        let seed: [u8; 32] = lines
            .next()
            .and_then(|l| hex::decode(l.trim()).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("its second line is not 64 hex digits"))?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// This key's signature of the module with digest `digest` (hex).
    fn sign_digest(&self, digest: &str) -> Option<ed25519_dalek::Signature> {
        Some(self.0.sign(&message(digest)?))
    }
}

/// One key's signature of a module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub key: PublicKey,
    /// The 64-byte ed25519 signature, in hex.
    pub signature: String,
}

/// A module's detached signatures (`app.wasm.sig`): the digest they are for and each
/// key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// `sha256:<hex>` of the module.
    pub module: String,
    pub signatures: Vec<Signed>,
}

impl Signatures {
    /// No signature yet, for the module with digest `digest` (hex).
    #[must_use]
    pub fn for_digest(digest: &str) -> Signatures {
        Signatures {
            module: format!("sha256:{digest}"),
            signatures: Vec::new(),
        }
    }

    /// The module's digest (hex) the signatures are for.
    #[must_use]
    pub fn digest(&self) -> &str {
        self.module.strip_prefix("sha256:").unwrap_or(&self.module)
    }

    /// Reads a signature file's bytes, bounded before they are parsed.
    ///
    /// # Errors
    /// [`TrustError::Malformed`] when they are not a signature file.
    pub fn parse(bytes: &[u8]) -> Result<Signatures, TrustError> {
        let bad = |reason: String| TrustError::Malformed { reason };
        if bytes.len() > MAX_SIGNATURE_FILE {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_SIGNATURE_FILE} a signature file may hold",
                bytes.len()
            )));
        }
        let sigs: Signatures = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if sigs.signatures.len() > MAX_SIGNATURES {
            return Err(bad(format!(
                "{} signatures, more than {MAX_SIGNATURES}",
                sigs.signatures.len()
            )));
        }
        if message(sigs.digest()).is_none() || !sigs.module.starts_with("sha256:") {
            return Err(bad(format!(
                "its module is `{}`, not sha256:<64 hex digits>",
                sigs.module.chars().take(80).collect::<String>()
            )));
        }
        Ok(sigs)
    }

    /// The file's text.
    #[must_use]
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Adds `key`'s signature, in place of any it made before.
    pub fn add(&mut self, key: &SigningKey) {
        let public = key.public();
        self.signatures.retain(|s| s.key != public);
        if let Some(sig) = key.sign_digest(self.digest()) {
            self.signatures.push(Signed {
                key: public,
                signature: hex::encode(sig.to_bytes()),
            });
        }
    }

    /// Checks the signatures against `module` and the keys `required`: the module must
    /// be the one they are for, every signature in the file must verify (an altered one
    /// is refused even if the policy does not need it), and every required key must
    /// have signed. Returns the keys whose signatures verified.
    ///
    /// # Errors
    /// The first check that failed.
    pub fn verify(
        &self,
        module: &[u8],
        required: &[PublicKey],
    ) -> Result<Vec<PublicKey>, TrustError> {
        self.verify_digest(&digest(module), required)
    }

    /// [`Signatures::verify`] for the module whose SHA-256 (hex) is `actual`: what the
    /// control plane checks at deploy, before any node fetches the module (whose bytes
    /// each node checks against the digest, then the signatures again).
    ///
    /// # Errors
    /// The first check that failed.
    pub fn verify_digest(
        &self,
        actual: &str,
        required: &[PublicKey],
    ) -> Result<Vec<PublicKey>, TrustError> {
        if actual != self.digest() {
            return Err(TrustError::Tampered {
                signed: self.module.clone(),
                actual: format!("sha256:{actual}"),
            });
        }
        let msg = message(actual).ok_or_else(|| TrustError::Malformed {
            reason: "no digest".into(),
        })?;
        let mut valid = Vec::new();
        for s in &self.signatures {
            let sig = hex::decode(&s.signature)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| ed25519_dalek::Signature::from_bytes(&b));
            match sig {
                Some(sig)
                    if s.key
                        .verifying()
                        .is_some_and(|k| k.verify(&msg, &sig).is_ok()) =>
                {
                    valid.push(s.key);
                }
                _ => return Err(TrustError::BadSignature { key: s.key }),
            }
        }
        if let Some(key) = required.iter().find(|k| !valid.contains(k)) {
            return Err(TrustError::NotSignedBy { key: *key });
        }
        Ok(valid)
    }
}

/// Checks `module` against the keys its policy `required`s, with its signatures if it
/// has any: what a node does before it runs any of a module.
///
/// # Errors
/// As [`check_digest`], for the module's own digest.
pub fn check_module(
    module: &[u8],
    signatures: Option<&Signatures>,
    required: &[PublicKey],
) -> Result<Vec<PublicKey>, TrustError> {
    check_digest(&digest(module), signatures, required)
}

/// [`check_module`] for the module whose SHA-256 (hex) is `actual`: what the control
/// plane checks at deploy, before any node fetches the module.
///
/// # Errors
/// [`TrustError::Unsigned`] when keys are required and there is no signature, else as
/// [`Signatures::verify_digest`].
pub fn check_digest(
    actual: &str,
    signatures: Option<&Signatures>,
    required: &[PublicKey],
) -> Result<Vec<PublicKey>, TrustError> {
    match (signatures, required.first()) {
        (Some(s), _) => s.verify_digest(actual, required),
        (None, Some(key)) => Err(TrustError::Unsigned { required: *key }),
        (None, None) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn signed(keys: &[&SigningKey]) -> Signatures {
        let mut s = Signatures::for_digest(&digest(MODULE));
        for k in keys {
            s.add(k);
        }
        s
    }

    #[test]
    fn a_signed_module_verifies_against_its_keys_and_round_trips_as_text() {
        let (a, b) = (
            SigningKey::generate().expect("key"),
            SigningKey::generate().expect("key"),
        );
        let sigs = Signatures::parse(signed(&[&a, &b]).to_json().as_bytes()).expect("parse");
        let valid = sigs
            .verify(MODULE, &[a.public(), b.public()])
            .expect("verify");
        assert_eq!(valid, vec![a.public(), b.public()]);
        // Signing again with the same key replaces its signature.
        let mut again = sigs.clone();
        again.add(&a);
        assert_eq!(again.signatures.len(), 2);
        let text = a.public().to_string();
        assert_eq!(text.parse::<PublicKey>().expect("parse"), a.public());
    }

    #[test]
    fn each_refusal_names_its_cause() {
        let (a, b) = (
            SigningKey::generate().expect("key"),
            SigningKey::generate().expect("key"),
        );
        let sigs = signed(&[&a]);
        // Unsigned, with a key required.
        let e = check_module(MODULE, None, &[a.public()]).expect_err("unsigned");
        assert!(e.to_string().starts_with("the module is not signed"), "{e}");
        // Unsigned, nothing required: runs.
        assert!(check_module(MODULE, None, &[]).is_ok());
        // Tampered module: one byte changed.
        let mut tampered = MODULE.to_vec();
        tampered[7] ^= 1;
        let e = sigs.verify(&tampered, &[]).expect_err("tampered");
        assert!(matches!(e, TrustError::Tampered { .. }), "{e}");
        assert!(e.to_string().contains("changed after it was signed"), "{e}");
        // Every flipped bit of the signature is refused, naming the key.
        let raw = hex::decode(&sigs.signatures[0].signature).expect("hex");
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let mut bad = sigs.clone();
            bad.signatures[0].signature = hex::encode(&flipped);
            match bad.verify(MODULE, &[]) {
                Err(TrustError::BadSignature { key }) => assert_eq!(key, a.public()),
                other => panic!("bit {bit}: {other:?}"),
            }
        }
        // A signature moved to another key's name does not verify either.
        let mut swapped = sigs.clone();
        swapped.signatures[0].key = b.public();
        assert!(matches!(
            swapped.verify(MODULE, &[]),
            Err(TrustError::BadSignature { .. })
        ));
        // Signed, but not by the key required.
        let e = sigs.verify(MODULE, &[b.public()]).expect_err("not b");
        assert_eq!(
            e.to_string(),
            format!(
                "the module is not signed by {}, which its policy requires",
                b.public()
            )
        );
    }

    #[test]
    fn garbage_is_refused_before_it_is_trusted() {
        for bytes in [
            &b""[..],
            b"{",
            b"{\"module\":\"sha256:00\",\"signatures\":[]}",
            b"{\"module\":\"md5:x\",\"signatures\":[]}",
            b"{\"module\":\"sha256:0000000000000000000000000000000000000000000000000000000000000000\",\"signatures\":[{\"key\":\"ed25519:zz\",\"signature\":\"\"}]}",
        ] {
            assert!(
                matches!(Signatures::parse(bytes), Err(TrustError::Malformed { .. })),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let huge = vec![b' '; MAX_SIGNATURE_FILE + 1];
        assert!(Signatures::parse(&huge).is_err());
        for text in [
            "",
            "ed25519:",
            "ed25519:00",
            "rsa:00",
            &"ed25519:".repeat(20),
        ] {
            assert!(text.parse::<PublicKey>().is_err(), "{text}");
        }
    }

    #[test]
    fn a_key_file_is_its_owners_alone_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("keys/signing.key");
        let key = SigningKey::generate().expect("key");
        key.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            SigningKey::load(&path).expect("load").public(),
            key.public()
        );
        assert!(matches!(
            SigningKey::generate().expect("key").save(&path),
            Err(TrustError::Io { .. })
        ));
        std::fs::write(dir.path().join("other"), "hello\n").expect("write");
        let e = SigningKey::load(&dir.path().join("other")).expect_err("not a key");
        assert!(e.to_string().contains("not a Tern signing key"), "{e}");
    }
}
