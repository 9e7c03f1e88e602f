//! Node identities: which key each node name is bound to, and the one-time join tokens
//! that enrol a node. Only the control plane reads or writes them (a node's credentials
//! reach neither bucket).
//!
//! A node enrols once: it makes its own key pair, and gives the control plane its
//! public key, its name and a join token. The control plane spends the token (a
//! compare-and-set delete: of two enrolments with one token, one wins), binds the name
//! to the key (a second key for a bound name is refused until the node is revoked), and
//! signs the node's credentials with its rights. The seed never leaves the node.

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::backbone::{Backbone, BackboneError, bucket, js_err};
use crate::protocol::{IDENTITIES, JOIN_TOKENS};

/// How long a join token enrols, unless told.
pub const JOIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The key a node name is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node's NATS user key (`U…`).
    pub key: String,
    pub enrolled_ms: u64,
    /// When it was revoked: its credentials open nothing since, and the name may be
    /// enrolled again with another key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// A join token not spent yet, under the SHA-256 of the token (the token itself is
/// kept nowhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    made_ms: u64,
    expires_ms: u64,
}

/// Why an enrolment was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrolError {
    #[error(
        "this join token is unknown, already spent or expired: ask for a new one (`tern node token`)"
    )]
    Token,
    #[error("node name `{0}` is enrolled with another key: `tern node revoke {0}` first")]
    Taken(String),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
}

/// The control plane's stores of identities and join tokens.
#[derive(Clone)]
pub struct Identities {
    identities: kv::Store,
    tokens: kv::Store,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities").finish_non_exhaustive()
    }
}

fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

impl Identities {
    /// Opens the stores, making them if missing (the control plane's credentials
    /// allow it).
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn open(backbone: &Backbone) -> Result<Identities, BackboneError> {
        let js = &backbone.js;
        let identities = bucket(
            js,
            true,
            kv::Config {
                bucket: IDENTITIES.into(),
                description: "Tern node identities: the key each node name is bound to".into(),
                history: 5,
                ..Default::default()
            },
        )
        .await?;
        let tokens = bucket(
            js,
            true,
            kv::Config {
                bucket: JOIN_TOKENS.into(),
                description: "Tern join tokens not spent yet, by SHA-256".into(),
                history: 1,
                ..Default::default()
            },
        )
        .await?;
        Ok(Identities { identities, tokens })
    }

    /// A new join token, good for one enrolment within `ttl`.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn make_token(
        &self,
        ttl: std::time::Duration,
    ) -> Result<(String, u64), BackboneError> {
        let token = crate::backbone::random_hex()
            .map_err(|e| BackboneError::Api(format!("no randomness for a token: {e}")))?;
        let now = crate::apps::now_ms();
        let expires_ms = now + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2);
        let pending = Pending {
            made_ms: now,
            expires_ms,
        };
        let json = serde_json::to_vec(&pending).map_err(|e| js_err("encode token", e))?;
        self.tokens
            .put(token_key(&token), json.into())
            .await
            .map_err(|e| js_err("store join token", e))?;
        Ok((token, expires_ms))
    }

    /// Spends `token`: true when it was there, unexpired, and this call spent it.
    async fn spend(&self, token: &str) -> Result<bool, BackboneError> {
        let key = token_key(token);
        let Some(entry) = self
            .tokens
            .entry(&key)
            .await
            .map_err(|e| js_err("read join token", e))?
        else {
            return Ok(false);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(false);
        }
        let pending: Pending = crate::apps::decode(&entry.value)?;
        let spent = self
            .tokens
            .delete_expect_revision(&key, Some(entry.revision))
            .await
            .is_ok();
        Ok(spent && pending.expires_ms > crate::apps::now_ms())
    }

    /// The identity node `name` is bound to, and its revision.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn get(&self, name: &str) -> Result<Option<(Identity, u64)>, BackboneError> {
        match self
            .identities
            .entry(name)
            .await
            .map_err(|e| js_err("read identity", e))?
        {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((crate::apps::decode(&e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Binds `name` to `key` unless it is bound to another key not revoked.
    async fn bind_checked(&self, name: &str, key: &str) -> Result<(), EnrolError> {
        let current = self.get(name).await?;
        if let Some((id, _)) = &current
            && id.revoked_ms.is_none()
            && id.key != key
        {
            return Err(EnrolError::Taken(name.to_owned()));
        }
        let id = Identity {
            key: key.to_owned(),
            enrolled_ms: crate::apps::now_ms(),
            revoked_ms: None,
        };
        let json = serde_json::to_vec(&id).map_err(|e| js_err("encode identity", e))?;
        let written = match current {
            Some((_, rev)) => self.identities.update(name, json.into(), rev).await.is_ok(),
            None => self.identities.create(name, json.into()).await.is_ok(),
        };
        if written {
            Ok(())
        } else {
            // Another enrolment of this name won the race.
            Err(EnrolError::Taken(name.to_owned()))
        }
    }

    /// Binds `name` to `key` for a node the caller vouches for (`tern up`'s own), unless
    /// the name is bound to another key not revoked.
    ///
    /// # Errors
    /// [`EnrolError::Taken`], or the backbone's.
    pub async fn bind(&self, name: &str, key: &str) -> Result<(), EnrolError> {
        if self
            .get(name)
            .await?
            .is_some_and(|(id, _)| id.key == key && id.revoked_ms.is_none())
        {
            return Ok(());
        }
        self.bind_checked(name, key).await
    }

    /// Enrols node `name` of public key `key` with the join `token`, which it spends.
    /// The name is checked first, so a token is not spent on a name that is taken.
    ///
    /// # Errors
    /// [`EnrolError::Token`] or [`EnrolError::Taken`], each one line.
    pub async fn enrol(&self, token: &str, name: &str, key: &str) -> Result<(), EnrolError> {
        if let Some((id, _)) = self.get(name).await?
            && id.revoked_ms.is_none()
            && id.key != key
        {
            return Err(EnrolError::Taken(name.to_owned()));
        }
        if !self.spend(token).await? {
            return Err(EnrolError::Token);
        }
        self.bind_checked(name, key).await
    }

    /// Marks node `name` revoked; returns the key it was bound to.
    ///
    /// # Errors
    /// [`BackboneError::Missing`] when no node of that name is enrolled.
    pub async fn revoke(&self, name: &str) -> Result<String, BackboneError> {
        let Some((mut id, rev)) = self.get(name).await? else {
            return Err(BackboneError::Missing {
                what: format!("an enrolled node `{name}`"),
            });
        };
        id.revoked_ms.get_or_insert_with(crate::apps::now_ms);
        let json = serde_json::to_vec(&id).map_err(|e| js_err("encode identity", e))?;
        self.identities
            .update(name, json.into(), rev)
            .await
            .map_err(|e| js_err("revoke identity", e))?;
        Ok(id.key)
    }
}
