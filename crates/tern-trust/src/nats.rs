//! Credentials for the backbone, in NATS's decentralised authentication: an operator key
//! signs the accounts, an account key signs its users, and nats-server checks each
//! connection against that chain and enforces each user's publish and subscribe rights
//! itself. No secret that opens the backbone is shared: a user proves its key by signing
//! the server's nonce, and its rights are in a JWT the account signed.
//!
//! An [`Authority`] holds a continuum's three keys: the operator, Tern's account (where
//! JetStream and every Tern subject live) and the system account (nats-server's own
//! traffic, through which account updates reach the server). It issues user JWTs with
//! [`Rights`], and revokes users by a new account JWT that names them, which the server
//! applies at once to connections already open.
//!
//! The JWTs are written here, not with a crate: the ones on crates.io issue no operator
//! JWT, or are marked unfinished. The format is NATS's v2 JWT: `base64url(header) "."
//! base64url(claims) "." base64url(ed25519 signature of the first two parts)`, with the
//! header `{"typ":"JWT","alg":"ed25519-nkey"}` and the signer's public nkey as `iss`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::{KeyPair, KeyPairType};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Why credentials could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    #[error("bad {what} seed: {reason}")]
    Seed { what: &'static str, reason: String },
    #[error("bad public key {key}: {reason}")]
    PublicKey { key: String, reason: String },
    #[error("cannot sign: {0}")]
    Sign(String),
    #[error("the authority {path}: {reason}")]
    File { path: String, reason: String },
}

/// What a user may publish and subscribe to: NATS subjects, with `*` and `>` wildcards.
/// A user without a right to a subject is refused by the server (a permissions
/// violation), and what it published there goes nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Whether the user may answer the requests it receives, on their reply subjects
    /// (one answer each), whatever `publish` says.
    pub replies: bool,
}

/// The keys at the root of a continuum's backbone, and the users it revoked.
pub struct Authority {
    operator: KeyPair,
    account: KeyPair,
    system: KeyPair,
    /// Revoked users' public keys, each with the time from which its JWTs are void.
    revoked: BTreeMap<String, u64>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("operator", &self.operator.public_key())
            .field("account", &self.account.public_key())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Three new keys, from the system's randomness.
    pub fn generate() -> Authority {
        Authority {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
            system: KeyPair::new_account(),
            revoked: BTreeMap::new(),
        }
    }

    /// The keys as text (three seeds, one a line, then one line per revoked user), to
    /// keep in a file only the controller reads.
    ///
    /// # Errors
    /// Never for keys made by [`Authority::generate`].
    pub fn to_text(&self) -> Result<String, NatsError> {
        let seed = |k: &KeyPair| k.seed().map_err(|e| NatsError::Sign(e.to_string()));
        let mut text = format!(
            "{}\n{}\n{}\n",
            seed(&self.operator)?,
            seed(&self.account)?,
            seed(&self.system)?
        );
        for (key, since) in &self.revoked {
            text.push_str(&format!("revoked {key} {since}\n"));
        }
        Ok(text)
    }

    /// Reads what [`Authority::to_text`] wrote.
    ///
    /// # Errors
    /// [`NatsError::Seed`] naming the key that is missing or malformed.
    pub fn from_text(text: &str) -> Result<Authority, NatsError> {
        let mut lines = text.lines();
        let mut key = |what: &'static str, kind: KeyPairType| {
            let line = lines.next().ok_or(NatsError::Seed {
                what,
                reason: "missing".into(),
            })?;
            key_of_seed(line, what, kind)
        };
        let operator = key("operator", KeyPairType::Operator)?;
        let account = key("account", KeyPairType::Account)?;
        let system = key("system account", KeyPairType::Account)?;
        let mut revoked = BTreeMap::new();
        for line in lines {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("revoked"), Some(user), Some(since)) => {
                    let since = since.parse().map_err(|_| NatsError::Seed {
                        what: "revocation",
                        reason: format!("bad time in {line:?}"),
                    })?;
                    revoked.insert(user.to_owned(), since);
                }
                (None, ..) => {}
                _ => {
                    return Err(NatsError::Seed {
                        what: "revocation",
                        reason: format!("unexpected line {line:?}"),
                    });
                }
            }
        }
        Ok(Authority {
            operator,
            account,
            system,
            revoked,
        })
    }

    /// The authority kept in `path` (as [`Authority::to_text`] wrote it).
    ///
    /// # Errors
    /// [`NatsError::File`] naming the file and why it cannot be read or used.
    pub fn load(path: &std::path::Path) -> Result<Authority, NatsError> {
        let file = |reason: String| NatsError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Authority::from_text(&text).map_err(|e| file(e.to_string()))
    }

    /// The authority kept in `path`, made and written there (0600) when there is none.
    ///
    /// # Errors
    /// [`NatsError::File`] when the file cannot be read, used or written.
    pub fn load_or_make(path: &std::path::Path) -> Result<Authority, NatsError> {
        if path.exists() {
            return Authority::load(path);
        }
        let authority = Authority::generate();
        crate::write_private(path, &authority.to_text()?).map_err(|e| NatsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(authority)
    }

    /// Tern's account, by its public key.
    pub fn account(&self) -> String {
        self.account.public_key()
    }

    /// The system account, by its public key.
    pub fn system_account(&self) -> String {
        self.system.public_key()
    }

    /// The operator's JWT, which nats-server is configured with.
    ///
    /// # Errors
    /// [`NatsError::Sign`] only if signing fails.
    pub fn operator_jwt(&self) -> Result<String, NatsError> {
        let key = self.operator.public_key();
        encode(
            &self.operator,
            &key,
            "tern",
            json!({"type": "operator", "version": 2, "system_account": self.system.public_key()}),
        )
    }

    /// Tern's account JWT: JetStream without limits, and every revoked user.
    ///
    /// # Errors
    /// [`NatsError::Sign`] only if signing fails.
    pub fn account_jwt(&self) -> Result<String, NatsError> {
        let limits = json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
            "max_ack_pending": -1, "mem_max_stream_bytes": -1, "disk_max_stream_bytes": -1,
            "max_bytes_required": false,
        });
        encode(
            &self.operator,
            &self.account.public_key(),
            "tern",
            json!({
                "type": "account", "version": 2, "limits": limits,
                "revocations": self.revoked,
                "default_permissions": {"pub": {}, "sub": {}},
            }),
        )
    }

    /// The system account's JWT.
    ///
    /// # Errors
    /// [`NatsError::Sign`] only if signing fails.
    pub fn system_account_jwt(&self) -> Result<String, NatsError> {
        encode(
            &self.operator,
            &self.system.public_key(),
            "SYS",
            json!({
                "type": "account", "version": 2,
                "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1,
                           "exports": -1, "wildcards": true, "conn": -1, "leaf": -1},
                "default_permissions": {"pub": {}, "sub": {}},
            }),
        )
    }

    /// A JWT for the user of public key `user` (a `U…` nkey), named `name`, in Tern's
    /// account, with `rights`.
    ///
    /// # Errors
    /// [`NatsError::PublicKey`] when `user` is not a user's public key.
    pub fn user_jwt(&self, name: &str, user: &str, rights: &Rights) -> Result<String, NatsError> {
        user_public_key(user)?;
        let mut claims = json!({
            "type": "user", "version": 2,
            "pub": {"allow": rights.publish},
            "sub": {"allow": rights.subscribe},
            "subs": -1, "data": -1, "payload": -1,
        });
        if rights.replies {
            // One answer per request received, within the server's default window.
            claims["resp"] = json!({"max": 1, "ttl": 0});
        }
        encode(&self.account, user, name, claims)
    }

    /// A JWT for a user of the system account (the one that pushes account updates),
    /// with every right there.
    ///
    /// # Errors
    /// As [`Authority::user_jwt`].
    pub fn system_user_jwt(&self, name: &str, user: &str) -> Result<String, NatsError> {
        user_public_key(user)?;
        encode(
            &self.system,
            user,
            name,
            json!({"type": "user", "version": 2, "pub": {}, "sub": {},
                   "subs": -1, "data": -1, "payload": -1}),
        )
    }

    /// Revokes every JWT of user `user` issued up to now; [`Authority::account_jwt`]
    /// then names it, and the server closes its connections once it has that JWT.
    ///
    /// # Errors
    /// [`NatsError::PublicKey`] when `user` is not a user's public key.
    pub fn revoke(&mut self, user: &str) -> Result<(), NatsError> {
        user_public_key(user)?;
        self.revoked.insert(user.to_owned(), now());
        Ok(())
    }

    /// Whether user `user` was revoked.
    pub fn is_revoked(&self, user: &str) -> bool {
        self.revoked.contains_key(user)
    }

    /// The lines of nats-server's configuration that make it trust this operator:
    /// the operator's JWT, the system account, and a resolver that keeps account JWTs in
    /// `dir` and takes updates signed by the operator (a revocation) through the system
    /// account, preloaded with both accounts.
    ///
    /// # Errors
    /// [`NatsError::Sign`] only if signing fails.
    pub fn server_config(&self, dir: &std::path::Path) -> Result<String, NatsError> {
        Ok(format!(
            "operator: {operator}\nsystem_account: {system}\n\
             resolver: {{ type: full, dir: {dir:?}, allow_delete: false, interval: \"2m\" }}\n\
             resolver_preload: {{\n  {account}: {account_jwt}\n  {system}: {system_jwt}\n}}\n",
            operator = self.operator_jwt()?,
            system = self.system.public_key(),
            account = self.account.public_key(),
            account_jwt = self.account_jwt()?,
            system_jwt = self.system_account_jwt()?,
            dir = dir.display().to_string(),
        ))
    }
}

/// The subject nats-server takes account JWT updates on, from a system account user.
pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// A new user key pair: its seed (secret, stays with the user) and its public key.
///
/// # Errors
/// [`NatsError::Sign`] only if the seed cannot be encoded.
pub fn new_user() -> Result<(String, String), NatsError> {
    let pair = KeyPair::new_user();
    let seed = pair.seed().map_err(|e| NatsError::Sign(e.to_string()))?;
    Ok((seed, pair.public_key()))
}

/// The public key of the user whose seed is `seed`.
///
/// # Errors
/// [`NatsError::Seed`] when `seed` is not a user's seed.
pub fn user_of_seed(seed: &str) -> Result<String, NatsError> {
    Ok(key_of_seed(seed, "user", KeyPairType::User)?.public_key())
}

/// The key pair of `seed`, which must be a `kind` key's (`what` names it in errors).
fn key_of_seed(seed: &str, what: &'static str, kind: KeyPairType) -> Result<KeyPair, NatsError> {
    let pair = KeyPair::from_seed(seed.trim()).map_err(|e| NatsError::Seed {
        what,
        reason: e.to_string(),
    })?;
    if pair.key_pair_type() != kind {
        return Err(NatsError::Seed {
            what,
            reason: "a seed of another kind of key".into(),
        });
    }
    Ok(pair)
}

/// A credentials file in NATS's format (JWT, then seed), as clients read it.
pub fn credentials(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The user seed of a credentials file's text, if it has one.
pub fn seed_of_credentials(text: &str) -> Option<String> {
    let seed = text
        .lines()
        .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"))
        .nth(1)?
        .trim();
    user_of_seed(seed).ok().map(|_| seed.to_owned())
}

/// The public key of the user a credentials file's text is for, if it has a seed.
pub fn user_of_credentials(text: &str) -> Option<String> {
    user_of_seed(&seed_of_credentials(text)?).ok()
}

/// The user JWT of a credentials file's text, if it has one.
pub fn jwt_of_credentials(text: &str) -> Option<String> {
    let jwt = text
        .lines()
        .skip_while(|l| !l.contains("BEGIN NATS USER JWT"))
        .nth(1)?
        .trim();
    (jwt.split('.').count() == 3).then(|| jwt.to_owned())
}

fn user_public_key(user: &str) -> Result<(), NatsError> {
    let pair = KeyPair::from_public_key(user).map_err(|e| NatsError::PublicKey {
        key: user.to_owned(),
        reason: e.to_string(),
    })?;
    if pair.key_pair_type() != KeyPairType::User {
        return Err(NatsError::PublicKey {
            key: user.to_owned(),
            reason: "not a user's key".into(),
        });
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JWT of `nats` claims about `subject`, named `name`, signed by `issuer`.
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String, NatsError> {
    let mut claims = json!({
        "jti": "",
        "iat": now(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    // The JWT's id: a hash of the claims without it, as NATS's own tools make it.
    let id = BASE32_NOPAD.encode(&Sha256::digest(claims.to_string().as_bytes()));
    claims["jti"] = Value::String(id);
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let signature = issuer
        .sign(signed.as_bytes())
        .map_err(|e| NatsError::Sign(e.to_string()))?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature)))
}

/// The claims of a JWT this module wrote, after checking its signature against its
/// issuer: for tests and for `tern` to show what a credential allows.
///
/// # Errors
/// A reason when the JWT is malformed or its signature does not verify.
pub fn decode(jwt: &str) -> Result<Value, String> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three parts".into());
    };
    let claims: Value = BASE64URL_NOPAD
        .decode(body.as_bytes())
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    let issuer = claims["iss"].as_str().ok_or("no issuer")?;
    let key = KeyPair::from_public_key(issuer).map_err(|e| e.to_string())?;
    let signature = BASE64URL_NOPAD
        .decode(signature.as_bytes())
        .map_err(|e| e.to_string())?;
    key.verify(format!("{header}.{body}").as_bytes(), &signature)
        .map_err(|e| format!("signature: {e}"))?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_of_signatures_holds() {
        let authority = Authority::generate();
        let operator = decode(&authority.operator_jwt().expect("jwt")).expect("verifies");
        assert_eq!(operator["iss"], operator["sub"]);
        assert_eq!(
            operator["nats"]["system_account"],
            authority.system_account()
        );
        let account = decode(&authority.account_jwt().expect("jwt")).expect("verifies");
        assert_eq!(account["iss"], operator["sub"]);
        assert_eq!(account["sub"], authority.account());
        let (seed, user) = new_user().expect("user");
        assert_eq!(user_of_seed(&seed).expect("seed"), user);
        let rights = Rights {
            publish: vec!["tern.alive.edge".into()],
            subscribe: vec!["_INBOX.>".into()],
            ..Rights::default()
        };
        let jwt = authority.user_jwt("edge", &user, &rights).expect("jwt");
        let creds = credentials(&jwt, &seed);
        assert_eq!(seed_of_credentials(&creds).as_deref(), Some(seed.as_str()));
        assert_eq!(jwt_of_credentials(&creds).as_deref(), Some(jwt.as_str()));
        assert_eq!(seed_of_credentials("garbage"), None);
        let claims = decode(&jwt).expect("verifies");
        assert_eq!(claims["iss"], authority.account());
        assert_eq!(claims["sub"], user);
        assert_eq!(claims["nats"]["pub"]["allow"], json!(["tern.alive.edge"]));
        // Any change to the claims breaks the signature.
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut body = BASE64URL_NOPAD.decode(parts[1].as_bytes()).expect("b64");
        let at = body.len() / 2;
        body[at] ^= 1;
        parts[1] = BASE64URL_NOPAD.encode(&body);
        assert!(decode(&parts.join(".")).is_err());
    }

    #[test]
    fn keys_and_revocations_survive_their_file() {
        let mut authority = Authority::generate();
        let (_, user) = new_user().expect("user");
        authority.revoke(&user).expect("revoke");
        let text = authority.to_text().expect("text");
        let back = Authority::from_text(&text).expect("reads");
        assert_eq!(back.account(), authority.account());
        assert!(back.is_revoked(&user));
        let account = decode(&back.account_jwt().expect("jwt")).expect("verifies");
        assert!(account["nats"]["revocations"][&user].is_number());
        // A seed of the wrong kind, or a damaged one, is named.
        let swapped: Vec<&str> = text.lines().collect();
        let wrong = format!("{}\n{}\n{}\n", swapped[1], swapped[0], swapped[2]);
        let err = Authority::from_text(&wrong).expect_err("wrong kind");
        assert_eq!(
            err.to_string(),
            "bad operator seed: a seed of another kind of key"
        );
        assert!(Authority::from_text("SOXX\n").is_err());
        assert!(authority.revoke("not-a-key").is_err());
        // Kept in a file only its owner reads, made once and read back after.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("authority");
        let err = Authority::load(&path).expect_err("no file");
        assert!(
            err.to_string()
                .starts_with(&format!("the authority {}: ", path.display())),
            "{err}"
        );
        let made = Authority::load_or_make(&path).expect("made");
        let kept = Authority::load_or_make(&path).expect("kept");
        assert_eq!(made.account(), kept.account());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "garbage\n").expect("write");
        let err = Authority::load(&path).expect_err("garbage");
        assert!(err.to_string().contains("bad operator seed"), "{err}");
        assert!(
            authority
                .user_jwt("x", &authority.account(), &Rights::default())
                .is_err()
        );
    }
}
