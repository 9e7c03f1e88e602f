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
        if cert_path.exists() && key_path.exists() {
            return Ca::load(&cert_path, &key_path);
        }
        let ca = Ca::generate()?;
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
        write_private(&key_path, &ca.key.serialize_pem())
            .map_err(|e| file_err(&key_path, e.to_string()))?;
        std::fs::write(&cert_path, &ca.cert_pem)
            .map_err(|e| file_err(&cert_path, e.to_string()))?;
        Ok(ca)
    }

    /// The CA whose certificate is in `cert` and key in `key`.
    ///
    /// # Errors
    /// [`TlsError::File`] for a file that cannot be read or is not of its kind.
    pub fn load(cert: &Path, key: &Path) -> Result<Ca, TlsError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| TlsError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let cert_pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?).map_err(|e| TlsError::File {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        certificates_of_pem(&cert_pem).map_err(|e| TlsError::File {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Ca { key, cert_pem })
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

/// The cryptography of every TLS connection Tern makes or takes: ring, the provider the
/// backbone's client already brings.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    // rustls marks its ring provider deprecated for lacking post-quantum key exchange;
    // its other provider, aws-lc-rs, is a C library built with cmake on every machine
    // that builds Tern. The suites used here (TLS 1.3, X25519, ECDSA and Ed25519) are
    // the classical ones both offer.
    #[allow(deprecated)]
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in `pem`, in order.
///
/// # Errors
/// [`TlsError::Make`] when `pem` holds none, or one is damaged.
pub fn certificates_of_pem(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Make(format!("a damaged certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Make("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// A TLS server's configuration: it presents `cert_pem` (a certificate, or a chain
/// with the server's first) and proves it holds `key_pem`, TLS 1.2 or 1.3.
///
/// # Errors
/// [`TlsError::Make`] when either is not PEM of its kind, or they do not match.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let certs = certificates_of_pem(cert_pem)?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Make(format!("not a private key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(make)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(make)?;
    Ok(std::sync::Arc::new(config))
}

/// The names a server is certified for when it listens on `ip` and is reached by
/// `advertise`: loopback's always, then the advertised host and the address itself
/// (unless it is every interface's).
pub fn server_names(ip: std::net::IpAddr, advertise: Option<&str>) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for n in [
        advertise.map(str::to_owned),
        (!ip.is_unspecified()).then(|| ip.to_string()),
    ]
    .into_iter()
    .flatten()
    {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The name a node's certificate is issued for, `NODE.nodes.tern`: a name no server of
/// the backbone or the API is given, so that a node's certificate never passes for
/// theirs.
pub fn node_dns_name(node: &str) -> String {
    format!("{node}.nodes.tern")
}

/// An Ed25519 public key, as rcgen writes it into a certificate.
struct Ed25519Public([u8; 32]);

impl rcgen::PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl Ca {
    /// A certificate of node `node` for the key `user_key`: its NATS user key (`U…`),
    /// so that one key pair is the node's identity on the backbone and on its
    /// migration streams. Valid a year, for either end of a TLS connection.
    ///
    /// # Errors
    /// [`TlsError::Make`] when `user_key` is not a user's public key, or `node` not a
    /// name.
    pub fn issue_node(&self, node: &str, user_key: &str) -> Result<String, TlsError> {
        let (_, raw) = nkeys::from_public_key(user_key)
            .map_err(|e| TlsError::Make(format!("not a node key {user_key}: {e}")))?;
        let name = node_dns_name(node);
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(make)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let issuer = ca_params()?.self_signed(&self.key).map_err(make)?;
        let cert = params
            .signed_by(&Ed25519Public(raw), &issuer, &self.key)
            .map_err(make)?;
        Ok(cert.pem())
    }
}

/// A node's TLS identity for its migration streams: its certificate (from the
/// continuum's CA, for its NATS user key) and that key, and the CA it trusts peers by.
#[derive(Clone)]
pub struct NodeTls {
    server: std::sync::Arc<rustls::ServerConfig>,
    client: std::sync::Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

impl NodeTls {
    /// The identity of the node whose certificate is `cert_pem`, whose NATS user seed
    /// is `seed` (`SU…`), trusting peers the CA `ca_pem` certified.
    ///
    /// # Errors
    /// [`TlsError::Make`] for a seed, certificate or CA that is not one, or a
    /// certificate of another key.
    pub fn new(cert_pem: &str, seed: &str, ca_pem: &str) -> Result<NodeTls, TlsError> {
        let (_, raw) = nkeys::decode_seed(seed.trim())
            .map_err(|e| TlsError::Make(format!("not a node's seed: {e}")))?;
        // PKCS#8 v1 of an Ed25519 key (RFC 8410): a fixed prefix, then the seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&raw);
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8.into());
        let chain = certificates_of_pem(cert_pem)?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certificates_of_pem(ca_pem)?);
        if added == 0 {
            return Err(TlsError::Make("no CA certificate in the PEM text".into()));
        }
        let roots = std::sync::Arc::new(roots);
        let peers =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(make)?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(make)?
            .with_client_cert_verifier(peers)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsError::Make(format!("the node's certificate and key: {e}")))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(make)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Make(format!("the node's certificate and key: {e}")))?;
        Ok(NodeTls {
            server: std::sync::Arc::new(server),
            client: std::sync::Arc::new(client),
        })
    }

    /// The side that listens: it asks every peer for a certificate of the CA's.
    pub fn server(&self) -> std::sync::Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The side that connects: it shows its certificate, and checks the listener's is
    /// the CA's for the node it means to reach (its [`node_dns_name`]).
    pub fn client(&self) -> std::sync::Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// Whether `cert` (a peer's, already checked against the CA) is node `node`'s.
///
/// # Errors
/// One line that names the node the certificate is for, or why it is none.
pub fn check_node_certificate(
    cert: &rustls::pki_types::CertificateDer<'_>,
    node: &str,
) -> Result<(), String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("the peer's certificate does not parse: {e}"))?;
    let want = node_dns_name(node);
    let name = rustls::pki_types::ServerName::try_from(want.as_str())
        .map_err(|e| format!("{want}: {e}"))?;
    parsed
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("the peer's certificate is not node {node}'s"))
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

    /// Runs a handshake between `client` (asking for `name`) and `server` in memory;
    /// the server's view of the client's certificate, or the first error.
    fn handshake(
        client: std::sync::Arc<rustls::ClientConfig>,
        server: std::sync::Arc<rustls::ServerConfig>,
        name: &str,
    ) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
        let name =
            rustls::pki_types::ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
        let mut c = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).map_err(|e| e.to_string())?;
            }
            s.read_tls(&mut buf.as_slice()).map_err(|e| e.to_string())?;
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
            let mut back = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut back).map_err(|e| e.to_string())?;
            }
            c.read_tls(&mut back.as_slice())
                .map_err(|e| e.to_string())?;
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return s
                    .peer_certificates()
                    .and_then(|p| p.first())
                    .map(|c| c.clone().into_owned())
                    .ok_or_else(|| "no client certificate".to_owned());
            }
        }
        Err("the handshake did not end".into())
    }

    #[test]
    fn nodes_authenticate_each_other_by_the_names_the_ca_certified() {
        let ca = Ca::generate().expect("CA");
        let node = |name: &str, ca: &Ca| {
            let (seed, key) = crate::nats::new_user().expect("key");
            let cert = ca.issue_node(name, &key).expect("certificate");
            (
                NodeTls::new(&cert, &seed, ca.cert_pem()).expect("TLS"),
                cert,
            )
        };
        let (a, a_cert) = node("a", &ca);
        let (b, _) = node("b", &ca);
        // a reaches b, and b sees a's certificate, which is a's and not c's.
        let seen = handshake(a.client(), b.server(), &node_dns_name("b")).expect("handshake");
        check_node_certificate(&seen, "a").expect("a's");
        let err = check_node_certificate(&seen, "c").expect_err("not c's");
        assert_eq!(err, "the peer's certificate is not node c's");
        assert_eq!(certificates_of_pem(&a_cert).expect("pem")[0], seen);
        // a meaning to reach c refuses b, whose certificate names b.
        let err = handshake(a.client(), b.server(), &node_dns_name("c")).expect_err("not c");
        assert!(err.contains("client:"), "{err}");
        // A node of another CA is refused by b, whatever name it claims.
        let other = Ca::generate().expect("another CA");
        let (seed, key) = crate::nats::new_user().expect("key");
        let forged = other.issue_node("a", &key).expect("certificate");
        let forger = NodeTls::new(&forged, &seed, ca.cert_pem()).expect("TLS");
        let err = handshake(forger.client(), b.server(), &node_dns_name("b")).expect_err("refused");
        assert!(err.contains("server:"), "{err}");
        // A certificate is for one key: another node's seed does not go with it.
        let (seed, _) = crate::nats::new_user().expect("key");
        assert!(NodeTls::new(&a_cert, &seed, ca.cert_pem()).is_err());
        assert!(ca.issue_node("a", "not-a-key").is_err());
        assert!(NodeTls::new(&a_cert, "SUXX", ca.cert_pem()).is_err());
    }
}
