//! The continuum's small certificate authority: `tern up` makes one, and it certifies
//! the backbone's server, so that every connection to it is encrypted and a client
//! knows it reached the continuum's own server (nats-server checks the clients
//! themselves by their NATS credentials).
//!
//! The CA is an ECDSA P-256 key and a self-signed certificate valid ten years, kept as
//! PEM (`ca.pem`, and `ca.key` readable by its owner only). A server certificate is
//! issued for the names and addresses clients reach the server by, valid a year, and
//! made again at each start. A client that trusts `ca.pem` trusts nothing else.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest as _, Sha256};

use crate::write_private;

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot make a certificate: {0}")]
    Make(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// The CA's certificate file, in its directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's key file, in its directory.
pub const CA_KEY: &str = "ca.key";

/// A certificate authority: its key and its certificate.
pub struct Ca {
    key: KeyPair,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A certificate issued by a [`Ca`] and its key, as PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn make(e: impl std::fmt::Display) -> TlsError {
    TlsError::Make(e.to_string())
}

/// The CA's parameters: the same each time, so that a certificate it issues names the
/// CA that a client trusts.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(make)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Tern continuum CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

impl Ca {
    /// A new CA, from the system's randomness.
    ///
    /// # Errors
    /// [`TlsError::Make`] only if the key cannot be made.
    pub fn generate() -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(make)?;
        let cert = ca_params()?.self_signed(&key).map_err(make)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// The CA kept in `dir` (`ca.pem`, `ca.key`), made and written there (the key
    /// 0600) when it has none.
    ///
    /// # Errors
    /// [`TlsError::File`] for a file that cannot be read or written, or is not a CA's.
    pub fn in_dir(dir: &Path) -> Result<Ca, TlsError> {
        let file_err = |path: &Path, reason: String| TlsError::File {
            path: path.display().to_string(),
            reason,
        };
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if let (Ok(cert_pem), Ok(key_pem)) = (
            std::fs::read_to_string(&cert_path),
            std::fs::read_to_string(&key_path),
        ) {
            let key =
                KeyPair::from_pem(&key_pem).map_err(|e| file_err(&key_path, e.to_string()))?;
            return Ok(Ca { key, cert_pem });
        }
        let ca = Ca::generate()?;
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
        write_private(&key_path, &ca.key.serialize_pem())
            .map_err(|e| file_err(&key_path, e.to_string()))?;
        std::fs::write(&cert_path, &ca.cert_pem)
            .map_err(|e| file_err(&cert_path, e.to_string()))?;
        Ok(ca)
    }

    /// The CA's certificate, as PEM: what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The SHA-256 of the CA's certificate (DER), as `sha256:` and 64 hex digits: what
    /// a join command pins.
    pub fn fingerprint(&self) -> String {
        fingerprint_of_pem(&self.cert_pem).unwrap_or_default()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid a year.
    ///
    /// # Errors
    /// [`TlsError::Make`] when a name is neither.
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(make)?;
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(n.clone().try_into().map_err(make)?),
                });
        }
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            names.first().map_or("tern", String::as_str),
        );
        params.distinguished_name = name;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let issuer = ca_params()?.self_signed(&self.key).map_err(make)?;
        let key = KeyPair::generate().map_err(make)?;
        let cert = params.signed_by(&key, &issuer, &self.key).map_err(make)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The SHA-256 of the first certificate in `pem`, as `sha256:` and 64 hex digits.
pub fn fingerprint_of_pem(pem: &str) -> Option<String> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = data_encoding::BASE64.decode(b64.trim().as_bytes()).ok()?;
    if der.is_empty() {
        return None;
    }
    Some(format!("sha256:{}", hex::encode(Sha256::digest(&der))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_kept_and_its_fingerprint_is_stable() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = Ca::in_dir(dir.path()).expect("made");
        let again = Ca::in_dir(dir.path()).expect("read back");
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert!(ca.fingerprint().starts_with("sha256:"));
        assert_eq!(ca.fingerprint().len(), 7 + 64);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(CA_KEY))
                .expect("key")
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the CA's key is mode {mode:o}");
        let other = Ca::generate().expect("another");
        assert_ne!(ca.fingerprint(), other.fingerprint());
        let leaf = again
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .expect("issued");
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_ne!(fingerprint_of_pem(&leaf.cert_pem), Some(ca.fingerprint()));
        assert!(again.issue_server(&["caf\u{e9}.example".into()]).is_err());
        assert_eq!(fingerprint_of_pem("garbage"), None);
    }
}
