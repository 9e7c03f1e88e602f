//! Enrolling and revoking nodes through the API. `POST /v1/join-tokens` (the API's
//! token) makes a one-time join token; `POST /v1/enrol` takes a token, a node name and
//! the node's public key, and answers with the node's credentials, signed by the
//! continuum's authority; `POST /v1/nodes/{name}/revoke` revokes a node's key at the
//! server at once and places its apps elsewhere.

use std::path::{Path as FilePath, PathBuf};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};
use tern_trust::nats::{Authority, CLAIMS_UPDATE};

use super::{ApiError, Shared, backbone_down, bad};
use crate::identity::{EnrolError, Identities, JOIN_TOKEN_TTL};
use crate::manifest::valid_name;

/// What the control plane needs to enrol and revoke nodes.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The file of the continuum's authority, which signs each node's credentials and
    /// the account updates that revoke one.
    pub authority: PathBuf,
    /// The backbone's URL, as nodes reach it.
    pub nats: String,
    /// The continuum's CA certificate, which an enrolled node trusts the backbone by.
    pub ca: Option<PathBuf>,
    /// The CA's key: with it, each enrolled node also gets a certificate for its key,
    /// which its migration streams are authenticated by.
    pub ca_key: Option<PathBuf>,
}

/// `POST /v1/join-tokens`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token enrols, in seconds [default: an hour].
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// `POST /v1/join-tokens`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinToken {
    pub token: String,
    pub expires_ms: u64,
}

/// `POST /v1/enrol`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    pub token: String,
    pub name: String,
    /// The node's NATS user public key (`U…`); its seed stays on the node.
    pub key: String,
}

/// `POST /v1/enrol`'s answer: the node's user JWT (its seed makes the credentials
/// whole) and where the backbone is.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub jwt: String,
    pub nats: String,
    /// The continuum's CA certificate (PEM), when the backbone uses TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The node's certificate (PEM) for the key it enrolled, from the continuum's CA,
    /// when the control plane holds the CA's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
}

/// `POST /v1/nodes/{name}/revoke`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    pub node: String,
    pub key: String,
}

/// `GET /v1/ca`: the continuum's CA certificate (PEM), which anyone may read. A node
/// that enrols over HTTPS reads it first, checks it against the fingerprint its join
/// command pins, and only then sends its join token, to a server that CA certified.
pub(super) async fn ca(State(s): State<Shared>) -> Result<Response, ApiError> {
    let path = enrolment(&s)?.ca.clone().ok_or_else(|| {
        bad(
            StatusCode::NOT_FOUND,
            "this control plane knows no CA certificate",
        )
    })?;
    let pem = tokio::fs::read_to_string(&path).await.map_err(|e| {
        bad(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the CA certificate {}: {e}", path.display()),
        )
    })?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        pem,
    )
        .into_response())
}

fn enrolment(s: &Shared) -> Result<&Enrolment, ApiError> {
    s.access.enrolment.as_ref().ok_or_else(|| {
        bad(
            StatusCode::CONFLICT,
            "this control plane holds no authority, so it cannot enrol or revoke nodes (`tern controller --authority FILE`)",
        )
    })
}

fn load(path: &FilePath) -> Result<Authority, ApiError> {
    Authority::load(path).map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn identities(s: &Shared) -> Result<Identities, ApiError> {
    Identities::open(&s.backbone).await.map_err(backbone_down)
}

/// `POST /v1/join-tokens`: a one-time join token.
pub(super) async fn make_token(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Option<Json<TokenRequest>>,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    enrolment(&s)?;
    let ttl = body
        .and_then(|Json(b)| b.ttl_s)
        .map_or(JOIN_TOKEN_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > Duration::from_secs(7 * 24 * 3600) {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a join token lasts from a second to a week",
        ));
    }
    let (token, expires_ms) = identities(&s)
        .await?
        .make_token(ttl)
        .await
        .map_err(backbone_down)?;
    Ok((StatusCode::CREATED, Json(JoinToken { token, expires_ms })).into_response())
}

/// `POST /v1/enrol`: the one request without the API's token; the join token in the
/// body is its authority, spent here.
pub(super) async fn enrol(
    State(s): State<Shared>,
    Json(request): Json<EnrolRequest>,
) -> Result<Json<Enrolled>, ApiError> {
    let enrolment = enrolment(&s)?.clone();
    if !valid_name(&request.name) {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "`{}` is not a node name: use lowercase letters, digits and `-`",
                request.name
            ),
        ));
    }
    let authority = load(&enrolment.authority)?;
    let rights = crate::protocol::node_rights(&request.name);
    // Checked before the token is spent: a key that is not a user's is refused here.
    let jwt = authority
        .user_jwt(&request.name, &request.key, &rights)
        .map_err(|e| bad(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let cert = match (&enrolment.ca, &enrolment.ca_key) {
        (Some(cert), Some(key)) => Some(
            tern_trust::tls::Ca::load(cert, key)
                .and_then(|ca| ca.issue_node(&request.name, &request.key))
                .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        ),
        _ => None,
    };
    match identities(&s)
        .await?
        .enrol(&request.token, &request.name, &request.key)
        .await
    {
        Ok(()) => {}
        Err(EnrolError::Token) => {
            return Err(bad(StatusCode::FORBIDDEN, EnrolError::Token.to_string()));
        }
        Err(e @ EnrolError::Taken(_)) => return Err(bad(StatusCode::CONFLICT, e.to_string())),
        Err(EnrolError::Backbone(e)) => return Err(backbone_down(e)),
    }
    tracing::info!(node = %request.name, key = %request.key, "node enrolled");
    let ca = match &enrolment.ca {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            bad(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the CA {}: {e}", path.display()),
            )
        })?),
        None => None,
    };
    Ok(Json(Enrolled {
        jwt,
        nats: enrolment.nats,
        ca,
        cert,
    }))
}

/// `POST /v1/nodes/{name}/revoke`: the node's key is revoked at the server (its
/// connections close at once and it cannot connect again), its entry leaves the
/// registry, and its apps are placed elsewhere as a lost node's.
pub(super) async fn revoke(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    s.authorize(&headers)?;
    let enrolment = enrolment(&s)?.clone();
    let ids = identities(&s).await?;
    let Some((id, _)) = ids.get(&node).await.map_err(backbone_down)? else {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no node named {node} is enrolled"),
        ));
    };
    let mut authority = load(&enrolment.authority)?;
    authority
        .revoke(&id.key)
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let text = authority
        .to_text()
        .map_err(|e| bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    crate::backbone::write_private_atomic(&enrolment.authority, &text).map_err(|e| {
        bad(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the authority {}: {e}", enrolment.authority.display()),
        )
    })?;
    push_account(&authority, &enrolment.nats, enrolment.ca.as_deref())
        .await
        .map_err(|e| bad(StatusCode::SERVICE_UNAVAILABLE, e))?;
    ids.revoke(&node).await.map_err(backbone_down)?;
    // Its apps are placed elsewhere once it is out of the registry.
    s.backbone.leave(&node).await.map_err(backbone_down)?;
    if let Ok(mut v) = s.view.write() {
        v.nodes.remove(&node);
        v.liveness.forget(&node);
    }
    tracing::info!(node = %node, key = %id.key, "node revoked");
    Ok(Json(Revoked { node, key: id.key }))
}

/// Sends the account's JWT, with its revocations, to the server at `url` as a user of
/// the system account; the server applies it to the connections already open.
async fn push_account(
    authority: &Authority,
    url: &str,
    ca: Option<&FilePath>,
) -> Result<(), String> {
    let (seed, user) = tern_trust::nats::new_user().map_err(|e| e.to_string())?;
    let jwt = authority
        .system_user_jwt("tern-control", &user)
        .map_err(|e| e.to_string())?;
    let creds = tern_trust::nats::credentials(&jwt, &seed);
    let mut options =
        async_nats::ConnectOptions::with_credentials(&creds).map_err(|e| e.to_string())?;
    if let Some(ca) = ca {
        options = options
            .add_root_certificates(ca.to_owned())
            .require_tls(true);
    }
    let client = options
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot reach the backbone's server to revoke: {e}"))?;
    let account = authority.account_jwt().map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(CLAIMS_UPDATE, account.into_bytes().into()),
    )
    .await
    .map_err(|_| "the server did not answer the account update within 10 s".to_owned())?
    .map_err(|e| format!("the account update: {e}"))?;
    let text = String::from_utf8_lossy(&answer.payload);
    if !text.contains("\"code\":200") {
        return Err(format!("the server refused the account update: {text}"));
    }
    Ok(())
}
