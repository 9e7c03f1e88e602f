//! The control plane: it keeps no state of its own. Its view of the nodes is rebuilt
//! from the backbone's registry (watched, never polled), and it serves the HTTP API the
//! CLI verbs talk to.
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `GET /v1/nodes` | — | JSON array of [`NodeView`]s (descriptor, load, round trips, drained), by name |
//! | `POST /v1/plan` | a manifest (TOML, at most [`MAX_BODY`] bytes) | JSON [`Plan`]: every node's verdict, best first |
//! | `GET /v1/latency` | — | JSON array of [`SiteRtt`]: the measured round trips between sites |
//! | `PUT /v1/modules/{sha256}` 🔑 | a module or seed file, at most [`apps::MAX_MODULE`] bytes | `{"digest", "size"}` |
//! | `POST /v1/apps` 🔑 | JSON [`apps::DeployRequest`] | JSON [`apps::Deployed`] (201) |
//! | `GET /v1/apps` | — | JSON array of [`AppView`](crate::apps::AppView) |
//! | `DELETE /v1/apps/{name}` 🔑 | — | `{"removed": name}` |
//! | `GET /v1/apps/{name}/logs?after=SEQ` 🔑 | — | frames `SEQ out\|err\|note LEN\n` + LEN bytes of output (a note is Tern's, such as a restart from the start) |
//! | `GET /v1/apps/{name}/explain[?why_not=NODE]` | — | every node's verdict on the app now |
//! | `POST /v1/apps/{name}/migrate` 🔑 | JSON [`MigrateRequest`] | JSON [`MoveRecord`](crate::moves::MoveRecord) (202): a live migration, node to node, recorded |
//! | `GET /v1/moves` | — | JSON array of every app's latest [`MoveRecord`](crate::moves::MoveRecord) |
//! | `GET /v1/moves/{app}` | — | the app's latest move |
//! | `GET /v1/apps/{name}/files?path=/guest/path` 🔑 | — | the file's bytes, from the node that has them (at most [`MAX_COPY`]) |
//! | `POST /v1/nodes/{name}/drain` 🔑 | — | JSON array of the moves recorded (202): every app off the node, which takes no more |
//! | `DELETE /v1/nodes/{name}/drain` 🔑 | — | the node takes apps again |
//! | `POST /v1/join-tokens` 🔑 | JSON [`enrol::TokenRequest`] (optional) | JSON [`JoinToken`] (201): one enrolment, within an hour by default |
//! | `POST /v1/enrol` (no API token) | JSON [`EnrolRequest`]: join token, name, public key | JSON [`Enrolled`]: the node's user JWT and the backbone's URL |
//! | `POST /v1/nodes/{name}/revoke` 🔑 | — | JSON [`Revoked`]: the node's key is revoked at the server, its apps placed elsewhere |
//!
//! Every request must carry `Authorization: Bearer TOKEN` when the control plane has a
//! token ([`Access`]): the continuum's token, or the read-only token, which reads what
//! the table does not mark. 🔑: only the continuum's token will do (the read-only token
//! gets 403); it acts, or reads an app's output or files. Without a token, 401 and
//! nothing is done. A control plane without a token serves only on a loopback address.
//!
//! Every error is a 4xx (or 503 while the backbone is unreachable) with a JSON body
//! `{"error": "…"}` of one line.
//!
//! Besides serving, the control plane keeps apps placed: see `recover`.

mod apps;
mod enrol;
mod liveness;
mod mover;
mod moves;
mod recover;
mod sweep;
mod view;

pub use apps::{DeployRequest, Deployed, MAX_MODULE};
pub use moves::{MAX_COPY, MigrateRequest};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post, put};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::apps::{AppEvent, AppRecord};
use crate::backbone::{Backbone, NodeEvent};
use crate::manifest;
use crate::model::NodeDescriptor;
use crate::scheduler::{Explanation, Request, Scheduler};
pub use enrol::{EnrolRequest, Enrolled, Enrolment, JoinToken, Revoked};
use view::View;

/// The largest request body the API reads: a manifest is a few hundred bytes.
pub const MAX_BODY: usize = 256 << 10;

/// How the control plane runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a node may be silent, while the backbone answers, before it is
    /// declared lost and its apps are placed elsewhere: shorter fails over sooner,
    /// longer rides out a node that a busy machine starves for a while.
    pub lost_after: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            lost_after: crate::backbone::LOST_AFTER,
        }
    }
}

#[derive(Clone)]
struct Shared {
    view: Arc<RwLock<View>>,
    scheduler: Scheduler,
    backbone: Backbone,
    /// Who may do what.
    access: Arc<Access>,
    /// What deploys found of each module (modules are immutable by digest and never
    /// removed, so one read and check serves every deploy that names it).
    modules: Arc<std::sync::Mutex<HashMap<String, apps::ModuleFacts>>>,
}

/// The tokens the API takes: the continuum's, which may do anything, and a read-only
/// one for dashboards. With neither, the API checks nothing, and serves only on a
/// loopback address.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub token: Option<String>,
    pub read_token: Option<String>,
    /// Enrolment of nodes (`POST /v1/enrol`, join tokens, revocation), when the
    /// control plane holds the continuum's authority.
    pub enrolment: Option<Enrolment>,
    /// The API's TLS (its certificate and key), which it needs beyond loopback:
    /// without it, requests are plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What a request's token lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Act,
    Read,
    Nothing,
}

impl Access {
    fn role(&self, headers: &axum::http::HeaderMap) -> Role {
        if self.token.is_none() && self.read_token.is_none() {
            return Role::Act;
        }
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if self.token.as_deref().is_some_and(|t| same(given, t)) {
            Role::Act
        } else if self.read_token.as_deref().is_some_and(|t| same(given, t)) {
            Role::Read
        } else {
            Role::Nothing
        }
    }
}

/// Refuses to serve the API on `addr` beyond loopback without a token: anyone who
/// reaches it could act on the continuum.
///
/// # Errors
/// The one line that says so.
pub fn exposure(addr: SocketAddr, access: &Access) -> Result<(), String> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if access.token.is_none() {
        return Err(format!(
            "refuses to serve on {addr} without a token: anyone who reaches it could act on the continuum; give it a token (--token or TERN_TOKEN), or listen on 127.0.0.1"
        ));
    }
    if access.tls.is_none() {
        return Err(format!(
            "refuses to serve on {addr} in plain HTTP: its tokens, join tokens and the apps' output would cross the network in clear; give it a certificate (--tls-cert and --tls-key), or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

/// Whether `a` and `b` are equal, compared in a time that does not depend on where
/// they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

const NO_TOKEN: &str = "this request needs a token: pass --token or TERN_TOKEN (the one `tern up` keeps in STATE/api/token, or the read-only one in STATE/api/read-token)";

impl Shared {
    /// Refuses a request that may not act (or read an app's output).
    fn authorize(&self, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
        match self.access.role(headers) {
            Role::Act => Ok(()),
            Role::Read => Err(ApiError(
                StatusCode::FORBIDDEN,
                "the read-only token only reads: this request needs the continuum's token".into(),
            )),
            Role::Nothing => Err(ApiError(StatusCode::UNAUTHORIZED, NO_TOKEN.into())),
        }
    }
}

/// Refuses every request without a token the API takes, before it is read further.
async fn require_token(
    State(s): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match s.access.role(request.headers()) {
        Role::Nothing => ApiError(StatusCode::UNAUTHORIZED, NO_TOKEN.into()).into_response(),
        Role::Act | Role::Read => next.run(request).await,
    }
}

/// `POST /v1/plan`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The node the deployment would go to, if any passes every filter.
    pub chosen: Option<String>,
    /// For a deployment of replicas: where each would go, in turn (`NAME-1` first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<(String, String)>,
    /// Every node: `{"node": …, "verdict": "eligible", "score": {…}}` or
    /// `{"node": …, "verdict": "rejected", "rejections": [{…, "text": …}]}`.
    pub nodes: Vec<serde_json::Value>,
}

/// An API error: its status and one line.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Serves the API on `listener` (HTTPS when `access` has TLS), follows the registry, the heartbeats and the
/// deployments, declares nodes lost, and keeps apps placed, until `stop` completes.
/// Requests must carry a token of `access`. Nothing the backbone does ends it: every
/// watch is opened again when it fails.
///
/// # Errors
/// When the listener fails, or listens beyond loopback while `access` has no token.
pub async fn serve(
    backbone: Backbone,
    access: Access,
    listener: tokio::net::TcpListener,
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), crate::backbone::BackboneError> {
    if let Ok(addr) = listener.local_addr() {
        exposure(addr, &access).map_err(crate::backbone::BackboneError::Api)?;
    }
    let shared = Shared {
        view: Arc::new(RwLock::new(View::new(settings))),
        scheduler: Scheduler::default(),
        backbone: backbone.clone(),
        access: Arc::new(access),
        modules: Arc::default(),
    };
    prime(&backbone, &shared.view).await;
    let b = backbone.clone();
    let mut app_events = Box::pin(crate::backbone::rewatch("deployments", move || {
        let b = b.clone();
        async move { b.watch_apps().await }
    }));
    let view = shared.view.clone();
    let follow_apps = tokio::spawn(async move {
        while let Some(event) = app_events.next().await {
            let Ok(mut v) = view.write() else { break };
            match event {
                AppEvent::Put(record, rev) => v.put_app(*record, rev),
                AppEvent::Removed(name) => v.remove_app(&name),
            }
        }
    });
    let b = backbone.clone();
    let mut status_events = Box::pin(crate::backbone::rewatch("instances", move || {
        let b = b.clone();
        async move { b.watch_statuses().await }
    }));
    let view = shared.view.clone();
    let follow_statuses = tokio::spawn(async move {
        while let Some(st) = status_events.next().await {
            let Ok(mut v) = view.write() else { break };
            v.put_status(st);
        }
    });
    let b = backbone.clone();
    let mut drain_events = Box::pin(crate::backbone::rewatch("drains", move || {
        let b = b.clone();
        async move { b.watch_drains().await.map(|w| w.map(Ok)) }
    }));
    let view = shared.view.clone();
    let follow_drains = tokio::spawn(async move {
        while let Some((node, drained)) = drain_events.next().await {
            let Ok(mut v) = view.write() else { break };
            if drained {
                v.drained.insert(node);
            } else {
                v.drained.remove(&node);
            }
        }
    });
    let b = backbone.clone();
    let mut move_events = Box::pin(crate::backbone::rewatch("moves", move || {
        let b = b.clone();
        async move { b.watch_moves().await }
    }));
    let view = shared.view.clone();
    let follow_moves = tokio::spawn(async move {
        while let Some((mv, rev)) = move_events.next().await {
            let Ok(mut v) = view.write() else { break };
            v.put_move(mv, rev);
        }
    });
    let keeping = tokio::spawn(recover::keep_placed(shared.clone()));
    let moving = tokio::spawn(mover::drive(shared.clone()));
    let sweeping = tokio::spawn(sweep::sweep(shared.clone()));
    let b = backbone.clone();
    let mut events = Box::pin(crate::backbone::rewatch("node registry", move || {
        let b = b.clone();
        async move { b.watch_nodes().await }
    }));
    let view = shared.view.clone();
    let follow = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let Ok(mut v) = view.write() else { break };
            match event {
                NodeEvent::Up(mut node) => {
                    // Its load and round trips come from its heartbeats.
                    if let Some(old) = v.nodes.get(&node.name) {
                        node.load = old.load;
                        node.rtt_ms = old.rtt_ms.clone();
                    }
                    v.liveness.seen(&node.name, std::time::Instant::now());
                    v.nodes.insert(node.name.clone(), *node);
                }
                NodeEvent::Gone(name) => {
                    v.nodes.remove(&name);
                    v.liveness.forget(&name);
                }
            }
        }
    });
    let beats = tokio::spawn(follow_heartbeats(backbone.clone(), shared.view.clone()));
    let echoes = tokio::spawn(echo(backbone.clone(), shared.view.clone()));
    let declaring = tokio::spawn(declare_lost(backbone.clone(), shared.view.clone()));
    let guarded = Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/v1/plan", post(plan))
        .route("/v1/latency", get(latency))
        .route(
            "/v1/modules/{digest}",
            put(apps::put_module).layer(DefaultBodyLimit::max(MAX_MODULE)),
        )
        .route("/v1/apps", post(apps::deploy).get(apps::list))
        .route("/v1/apps/{name}", axum::routing::delete(apps::remove))
        .route("/v1/apps/{name}/logs", get(apps::logs))
        .route("/v1/apps/{name}/explain", get(apps::explain))
        .route("/v1/apps/{name}/migrate", post(moves::migrate))
        .route("/v1/moves", get(moves::list))
        .route("/v1/moves/{app}", get(moves::one))
        .route("/v1/apps/{name}/files", get(moves::file))
        .route(
            "/v1/nodes/{name}/drain",
            post(moves::drain).delete(moves::undrain),
        )
        .route("/v1/nodes/{name}/revoke", post(enrol::revoke))
        .route("/v1/join-tokens", post(enrol::make_token))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    // Enrolment alone needs no API token: the join token in its body is its authority.
    let tls = shared.access.tls.clone();
    let app = Router::new()
        .route("/v1/enrol", post(enrol::enrol))
        .route("/v1/ca", get(enrol::ca))
        .merge(guarded)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared);
    let served = accept(listener, app, tls, stop).await;
    follow.abort();
    beats.abort();
    echoes.abort();
    declaring.abort();
    follow_apps.abort();
    follow_statuses.abort();
    sweeping.abort();
    follow_drains.abort();
    keeping.abort();
    moving.abort();
    follow_moves.abort();
    served.map_err(|e| crate::backbone::BackboneError::Api(format!("failed: {e}")))
}

/// Reads the nodes, apps and statuses once before the API answers, so that a control
/// plane that just started does not say a node or an app is missing while its watches
/// replay. A read that fails leaves it to the watches.
async fn prime(backbone: &Backbone, view: &Arc<RwLock<View>>) {
    let nodes = backbone.nodes().await.unwrap_or_default();
    let apps = backbone.apps().await.unwrap_or_default();
    let statuses = backbone.statuses().await.unwrap_or_default();
    let Ok(mut v) = view.write() else { return };
    let now = std::time::Instant::now();
    for n in nodes {
        v.liveness.seen(&n.name, now);
        v.nodes.insert(n.name.clone(), n);
    }
    for (record, rev) in apps {
        v.put_app(record, rev);
    }
    for st in statuses {
        v.put_status(st);
    }
}

/// Folds every heartbeat into the view: the node's load and round trips (by site, in
/// the matrix the scheduler reads), and that it is alive. A heartbeat of a node not in
/// the registry (one declared lost, until it joins again) counts for nothing.
async fn follow_heartbeats(backbone: Backbone, view: Arc<RwLock<View>>) {
    loop {
        let mut beats = match backbone.heartbeats().await {
            Ok(b) => Box::pin(b),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeats: subscribing again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(beat) = beats.next().await {
            let Ok(mut v) = view.write() else { return };
            let v = &mut *v;
            let Some(node) = v.nodes.get_mut(&beat.name) else {
                continue;
            };
            node.load = beat.load;
            let site = node.site.clone();
            for (peer, ms) in &beat.rtt_ms {
                if let Some(p) = v.site_of(peer) {
                    v.rtt.set(&site, &p, *ms);
                }
            }
            if let Some(node) = v.nodes.get_mut(&beat.name) {
                node.rtt_ms = beat.rtt_ms;
            }
            v.liveness.seen(&beat.name, std::time::Instant::now());
        }
    }
}

/// Sends the control plane an echo through the server every [`liveness::ECHO_EVERY`],
/// and tells the view whether it came back in time.
async fn echo(backbone: Backbone, view: Arc<RwLock<View>>) {
    let subject =
        crate::protocol::echo_subject(u64::from(std::process::id()) ^ crate::apps::now_ms());
    let mut tick = tokio::time::interval(liveness::ECHO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut replies = None;
    loop {
        tick.tick().await;
        if replies.is_none() {
            replies = backbone.client.subscribe(subject.clone()).await.ok();
        }
        let Some(sub) = replies.as_mut() else {
            if let Ok(mut v) = view.write() {
                v.liveness.silent_backbone();
            }
            continue;
        };
        let sent = backbone
            .client
            .publish(subject.clone(), bytes::Bytes::new())
            .await
            .is_ok();
        let back = sent
            && tokio::time::timeout(liveness::ECHO_LATE, sub.next())
                .await
                .is_ok_and(|m| m.is_some());
        let Ok(mut v) = view.write() else { return };
        if back {
            v.liveness.echo(std::time::Instant::now());
        } else {
            v.liveness.silent_backbone();
            // Echoes that come back late are read off before the next one is sent.
            replies = None;
        }
    }
}

/// Declares lost, every [`liveness::ECHO_EVERY`], each node silent for the setting while
/// the backbone answered: it leaves the view and the registry (so its peers forget it
/// and the node, if it was only cut off, joins again), and `recover` places its apps
/// elsewhere.
async fn declare_lost(backbone: Backbone, view: Arc<RwLock<View>>) {
    let mut tick = tokio::time::interval(liveness::ECHO_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let lost = {
            let Ok(mut v) = view.write() else { return };
            let lost = v.liveness.lost(std::time::Instant::now());
            for (name, _) in &lost {
                v.nodes.remove(name);
                v.liveness.forget(name);
            }
            lost
        };
        for (name, silent) in lost {
            let note = format!(
                "node {name} is lost: silent for {:.1} s while the backbone answered",
                silent.as_secs_f64()
            );
            tracing::warn!(node = %name, "{note}");
            let _ = backbone
                .client
                .publish(crate::protocol::node_events_subject(&name), note.into())
                .await;
            if let Err(e) = backbone.leave(&name).await {
                tracing::warn!(node = %name, error = %e, "cannot remove the lost node's entry");
            }
        }
    }
}

/// Connections the API serves at once; more are closed as they come.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The API's accept loop. axum's own `serve` sets no timeouts, so a client that sends
/// half a request and stalls would hold its connection forever: here each connection
/// gets [`HEADER_TIMEOUT`] for its TLS handshake and its headers and
/// [`CONNECTION_TIMEOUT`] in all, and at most [`MAX_CONNECTIONS`] are served at once.
async fn accept(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken:
                    // wait a little and go on.
                    tracing::warn!(error = %e, "API accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "API: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = async {
                match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "API: TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "API: TLS handshake too slow"),
                        }
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = http.serve_connection(io, service).await;
                    }
                }
            };
            if tokio::time::timeout(CONNECTION_TIMEOUT, served)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "API connection outlived its time");
            }
            drop(slot);
        });
    }
}

/// Binds the API's address, with a message that says what to do when it is taken.
///
/// # Errors
/// The address in use or not allowed, in one line.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {addr}: it is in use (another `tern controller` or `tern up`?); choose another with --listen"
        ),
        _ => format!("cannot listen on {addr}: {e}"),
    })
}

/// A node as `GET /v1/nodes` shows it: its descriptor, live load and round trips, and
/// whether it is drained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: NodeDescriptor,
    #[serde(default)]
    pub drained: bool,
}

async fn nodes(State(s): State<Shared>) -> Result<Json<Vec<NodeView>>, ApiError> {
    let v = s.view.read().map_err(|_| unavailable())?;
    Ok(Json(
        v.nodes
            .values()
            .map(|n| NodeView {
                node: n.clone(),
                drained: v.drained.contains(&n.name),
            })
            .collect(),
    ))
}

/// A measured round trip between two sites.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteRtt {
    pub a: String,
    pub b: String,
    pub ms: f64,
}

async fn latency(State(s): State<Shared>) -> Result<Json<Vec<SiteRtt>>, ApiError> {
    let v = s.view.read().map_err(|_| unavailable())?;
    // Only between sites that have a node now: a site whose nodes are all gone has no
    // round trip to show.
    let live = |site: &str| v.nodes.values().any(|n| n.site == site);
    let mut pairs: Vec<SiteRtt> = v
        .rtt
        .pairs()
        .filter(|(a, b, _)| live(a) && live(b))
        .map(|(a, b, ms)| {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            SiteRtt {
                a: a.to_owned(),
                b: b.to_owned(),
                ms,
            }
        })
        .collect();
    pairs.sort_by(|x, y| (&x.a, &x.b).cmp(&(&y.a, &y.b)));
    Ok(Json(pairs))
}

async fn plan(State(s): State<Shared>, body: axum::body::Bytes) -> Result<Json<Plan>, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "the manifest is not UTF-8 text".into(),
        )
    })?;
    let m = manifest::parse(text).map_err(|e| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid manifest: {e}"),
        )
    })?;
    let v = s.view.read().map_err(|_| unavailable())?;
    // What `deploy` would place against: drained nodes left out, reservations counted.
    let c = v.candidates(None);
    let excluded = c.excluded();
    let req = Request {
        exclude: &excluded,
        ..Request::new(&m)
    };
    let mut plan = plan_of(s.scheduler.explain(&req, &c.nodes, &v.rtt));
    if m.replicas > 1 {
        let names = apps::replica_names(&m);
        if let Ok(placed) = apps::place_replicas(&s.scheduler, &v, &m, &names) {
            plan.replicas = names.into_iter().zip(placed).collect();
        }
    }
    Ok(Json(plan))
}

fn plan_of(e: Explanation) -> Plan {
    use crate::scheduler::Verdict;
    let nodes = e
        .nodes
        .into_iter()
        .map(|(node, verdict)| match verdict {
            Verdict::Eligible { score } => serde_json::json!({
                "node": node, "verdict": "eligible", "score": score,
            }),
            Verdict::Rejected { rejections } => serde_json::json!({
                "node": node, "verdict": "rejected",
                "rejections": rejections.iter().map(|r| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("text".into(), r.to_string().into());
                    }
                    v
                }).collect::<Vec<_>>(),
            }),
        })
        .collect();
    Plan {
        chosen: e.chosen,
        replicas: Vec::new(),
        nodes,
    }
}

/// An API error of `status` saying `message`.
fn bad(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError(status, message.into())
}

/// The backbone did not answer.
fn backbone_down(e: impl std::fmt::Display) -> ApiError {
    bad(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the backbone is unreachable: {e}"),
    )
}

/// App `name`'s record and revision, or 404.
async fn record(s: &Shared, name: &str) -> Result<(AppRecord, u64), ApiError> {
    if let Some(found) = s.backbone.app(name).await.map_err(backbone_down)? {
        return Ok(found);
    }
    // A deployment's name: its replicas are the apps.
    let replicas: Vec<String> = s
        .view
        .read()
        .map(|v| {
            v.apps()
                .filter(|p| p.record.replica_of.as_deref() == Some(name))
                .map(|p| p.record.name.clone())
                .collect()
        })
        .unwrap_or_default();
    Err(bad(
        StatusCode::NOT_FOUND,
        if replicas.is_empty() {
            format!("no app named {name}; `tern ps` lists them")
        } else {
            format!(
                "{name} is a deployment of {} replicas, each an app of its own: name one of {}",
                replicas.len(),
                replicas.join(", ")
            )
        },
    ))
}

fn unavailable() -> ApiError {
    ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "the control plane's view is unavailable; restart it".into(),
    )
}

async fn not_found(method: axum::http::Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", uri.path()),
    )
}
