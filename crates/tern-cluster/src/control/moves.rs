//! Moving apps: `tern migrate` (a live migration to a node the user names), `tern
//! drain` (every app off a node: migratable ones live, the others restarted
//! elsewhere), and `tern cp` (a file of an app's volumes, from the node that has them).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, Shared, backbone_down, bad, record, unavailable};
use crate::apps::{AppRecord, now_ms};
use crate::manifest;
use crate::model::InstanceState;
use crate::scheduler::{Request, Verdict};
use crate::supervisor::{Moved, NodeCommand, NodeReply, READ_CHUNK, command_subject};

/// How long a node may take to start listening for a migration.
const RECEIVE_WAIT: Duration = Duration::from_secs(30);
/// How long a live migration may take, from the source's start to the destination's
/// confirmation.
const MIGRATE_WAIT: Duration = Duration::from_secs(50);
/// The largest file `tern cp` copies.
pub const MAX_COPY: u64 = 256 << 20;

/// `POST /v1/apps/{name}/migrate`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub to: String,
}

/// A move that was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Move {
    pub name: String,
    pub from: String,
    pub to: String,
    /// `migrated` (live, nothing lost) or `restarted` (from its start, or its last
    /// checkpoint).
    pub how: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Moved>,
    pub note: String,
}

/// Asks `node` to do `cmd` and waits up to `wait` for its answer.
async fn ask(
    s: &Shared,
    node: &str,
    cmd: &NodeCommand,
    wait: Duration,
) -> Result<NodeReply, String> {
    let body = serde_json::to_vec(cmd).map_err(|e| e.to_string())?;
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(wait));
    let answer = s
        .backbone
        .client
        .send_request(command_subject(node), request)
        .await
        .map_err(|e| format!("node {node} did not answer: {e}"))?;
    let reply: NodeReply = serde_json::from_slice(&answer.payload)
        .map_err(|e| format!("node {node} answered something else: {e}"))?;
    match reply.error {
        Some(e) => Err(e),
        None => Ok(reply),
    }
}

/// `POST /v1/apps/{name}/migrate`: live-migrates the app to the node named.
pub(super) async fn migrate(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Move>, ApiError> {
    s.authorize(&headers)?;
    let req: MigrateRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            format!("not a migrate request: {e}"),
        )
    })?;
    live_move(&s, &name, &req.to, "tern migrate")
        .await
        .map(Json)
}

/// Moves `name` live to `to`; `why` says who asked, for the app's note.
async fn live_move(s: &Shared, name: &str, to: &str, why: &str) -> Result<Move, ApiError> {
    let (record, rev) = record(s, name).await?;
    let m = manifest::parse(&record.manifest).map_err(|e| {
        bad(
            StatusCode::CONFLICT,
            format!("its manifest no longer reads: {e}"),
        )
    })?;
    if !m.migratable {
        return Err(bad(
            StatusCode::CONFLICT,
            format!(
                "{name} is not migratable (its manifest says migratable = false); `tern drain` restarts such apps elsewhere"
            ),
        ));
    }
    let from = record.node.clone().ok_or_else(|| {
        bad(
            StatusCode::CONFLICT,
            format!("{name} waits for a node; there is nothing to move"),
        )
    })?;
    if from == to {
        return Err(bad(
            StatusCode::CONFLICT,
            format!("{name} runs on {to} already"),
        ));
    }
    let status = s.backbone.status(name).await.map_err(backbone_down)?;
    let running = status.as_ref().is_some_and(|st| {
        st.incarnation == record.incarnation && st.state == InstanceState::Running
    });
    if !running {
        let state = status
            .filter(|st| st.incarnation == record.incarnation)
            .map_or("placed", |st| st.state.name());
        return Err(bad(
            StatusCode::CONFLICT,
            format!("{name} is {state}, not running: only a running app moves live"),
        ));
    }
    // The destination must pass every filter, as a placement would.
    {
        let v = s.view.read().map_err(|_| unavailable())?;
        let nodes = v.nodes_with_reservations_except(name);
        if !nodes.iter().any(|n| n.name == to) {
            return Err(bad(
                StatusCode::NOT_FOUND,
                format!("no node named {to}; `tern nodes` lists them"),
            ));
        }
        let mut req = Request::new(&m);
        req.current = Some(&from);
        let excluded = v.excluded();
        req.exclude = &excluded;
        let e = s.scheduler.explain(&req, &nodes, &v.rtt);
        if let Some((_, Verdict::Rejected { rejections })) = e.nodes.iter().find(|(n, _)| n == to) {
            let why: Vec<String> = rejections.iter().map(ToString::to_string).collect();
            return Err(bad(
                StatusCode::CONFLICT,
                format!(
                    "{to} cannot take {name}: {}; it stays on {from}",
                    why.join(", ")
                ),
            ));
        }
    }
    let next = record.incarnation + 1;
    let receive = NodeCommand::Receive {
        app: name.to_owned(),
        incarnation: next,
        from: record.incarnation,
    };
    let addr = ask(s, to, &receive, RECEIVE_WAIT)
        .await
        .and_then(|r| r.addr.ok_or_else(|| "no address".to_owned()))
        .map_err(|e| {
            bad(
                StatusCode::CONFLICT,
                format!("{to} cannot receive {name}: {e}; it stays on {from}"),
            )
        })?;
    let site = s
        .view
        .read()
        .map_err(|_| unavailable())?
        .nodes
        .get(to)
        .map(|n| n.site.clone())
        .unwrap_or_default();
    let send = NodeCommand::Migrate {
        app: name.to_owned(),
        incarnation: record.incarnation,
        to: to.to_owned(),
        site,
        addr,
    };
    let moved = match ask(s, &from, &send, MIGRATE_WAIT).await {
        Ok(r) => r.moved.unwrap_or_default(),
        Err(e) => {
            let cancel = NodeCommand::Cancel {
                app: name.to_owned(),
                incarnation: next,
            };
            let _ = ask(s, to, &cancel, RECEIVE_WAIT).await;
            return Err(bad(
                StatusCode::CONFLICT,
                format!("the migration of {name} to {to} failed: {e}; it keeps running on {from}"),
            ));
        }
    };
    let note = format!(
        "moved live from {from} to {to} ({why}): downtime {:.1} ms, {} KiB sent",
        moved.downtime_ms,
        moved.bytes.div_ceil(1024)
    );
    record_move(s, record, rev, to, next, &note).await?;
    Ok(Move {
        name: name.to_owned(),
        from,
        to: to.to_owned(),
        how: "migrated".into(),
        stats: Some(moved),
        note,
    })
}

/// Writes the app's new place, even if its record changed meanwhile (a checkpoint's
/// restore point, say): the move has happened.
async fn record_move(
    s: &Shared,
    mut record: AppRecord,
    mut rev: u64,
    to: &str,
    incarnation: u64,
    note: &str,
) -> Result<(), ApiError> {
    for _ in 0..5 {
        record.node = Some(to.to_owned());
        record.incarnation = incarnation;
        record.restore = None;
        record.note = note.to_owned();
        if s.backbone
            .put_app(&record, rev)
            .await
            .map_err(backbone_down)?
            .is_some()
        {
            let _ = s
                .backbone
                .client
                .publish(
                    format!("tern.events.{}", record.name),
                    note.to_owned().into(),
                )
                .await;
            return Ok(());
        }
        match s.backbone.app(&record.name).await.map_err(backbone_down)? {
            Some((r, v)) => {
                record = r;
                rev = v;
            }
            None => {
                return Err(bad(
                    StatusCode::CONFLICT,
                    format!("{} was removed during its move", record.name),
                ));
            }
        }
    }
    Err(bad(
        StatusCode::CONFLICT,
        format!("{} kept changing during its move", record.name),
    ))
}

/// `POST /v1/nodes/{name}/drain`: no app is placed on the node any more, and every app
/// on it moves: live when it is migratable and running, else restarted elsewhere.
pub(super) async fn drain(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<Json<Vec<Move>>, ApiError> {
    s.authorize(&headers)?;
    if !s
        .view
        .read()
        .map_err(|_| unavailable())?
        .nodes
        .contains_key(&node)
    {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no node named {node}; `tern nodes` lists them"),
        ));
    }
    s.backbone.drain(&node, true).await.map_err(backbone_down)?;
    if let Ok(mut v) = s.view.write() {
        v.drained.insert(node.clone());
    }
    let apps: Vec<(AppRecord, u64)> = {
        let v = s.view.read().map_err(|_| unavailable())?;
        v.apps
            .values()
            .filter(|(r, _, _)| {
                r.node.as_deref() == Some(&node) && v.ended.get(&r.name) != Some(&r.incarnation)
            })
            .map(|(r, rev, _)| (r.clone(), *rev))
            .collect()
    };
    let mut moves = Vec::new();
    for (record, rev) in apps {
        moves.push(drain_one(&s, &node, record, rev).await);
    }
    Ok(Json(moves))
}

/// Moves one app off a drained node, and says how.
async fn drain_one(s: &Shared, node: &str, record: AppRecord, rev: u64) -> Move {
    let name = record.name.clone();
    let failed = |note: String| Move {
        name: name.clone(),
        from: node.to_owned(),
        to: String::new(),
        how: "stayed".into(),
        stats: None,
        note,
    };
    let Ok(m) = manifest::parse(&record.manifest) else {
        return failed("its manifest no longer reads".into());
    };
    let chosen = {
        let Ok(v) = s.view.read() else {
            return failed("the control plane's view is unavailable".into());
        };
        let nodes = v.nodes_with_reservations_except(&name);
        let mut req = Request::new(&m);
        req.current = Some(node);
        let excluded = v.excluded();
        req.exclude = &excluded;
        match s.scheduler.place(&req, &nodes, &v.rtt) {
            Some(i) => nodes[i].name.clone(),
            None => {
                return failed(super::apps::no_node(
                    &name,
                    &s.scheduler.explain(&req, &nodes, &v.rtt),
                ));
            }
        }
    };
    if m.migratable {
        match live_move(s, &name, &chosen, &format!("drain {node}")).await {
            Ok(mv) => return mv,
            Err(ApiError(_, e)) => {
                tracing::warn!(app = %name, error = %e, "drain: no live move; restarting elsewhere");
            }
        }
    }
    // Not migratable (or not running, or its migration failed): restarted elsewhere,
    // from its last checkpoint if it has one.
    let status = s.backbone.status(&name).await.ok().flatten();
    let checkpoint = record
        .resume_point(status.as_ref())
        .filter(|_| m.migratable);
    let note = match &checkpoint {
        Some(c) => format!(
            "restarted on {chosen} (drain {node}) from its checkpoint of {:.1} s before",
            now_ms().saturating_sub(c.at_ms) as f64 / 1e3
        ),
        None if m.migratable => format!(
            "restarted on {chosen} from its start (drain {node}; it could not move live and had no checkpoint yet)"
        ),
        None => {
            format!("restarted on {chosen} from its start (drain {node}; it is not migratable)")
        }
    };
    let mut next = record.clone();
    next.node = Some(chosen.clone());
    next.incarnation += 1;
    next.restarts += 1;
    next.restore = checkpoint;
    next.note = note.clone();
    match s.backbone.put_app(&next, rev).await {
        Ok(Some(_)) => {
            let _ = s
                .backbone
                .client
                .publish(format!("tern.events.{name}"), note.clone().into())
                .await;
            Move {
                name: name.clone(),
                from: node.to_owned(),
                to: chosen,
                how: "restarted".into(),
                stats: None,
                note,
            }
        }
        Ok(None) => failed("it changed during the drain; drain again".into()),
        Err(e) => failed(e.to_string()),
    }
}

/// `DELETE /v1/nodes/{name}/drain`: the node takes apps again.
pub(super) async fn undrain(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize(&headers)?;
    s.backbone
        .drain(&node, false)
        .await
        .map_err(backbone_down)?;
    if let Ok(mut v) = s.view.write() {
        v.drained.remove(&node);
    }
    Ok(Json(serde_json::json!({ "undrained": node })))
}

#[derive(Debug, Deserialize)]
pub(super) struct FileQuery {
    path: String,
}

/// `GET /v1/apps/{name}/files?path=/guest/path`: a file of the app's volumes, as its
/// node has it now (running or finished).
pub(super) async fn file(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<FileQuery>,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let (record, _) = record(&s, &name).await?;
    let node = record.node.ok_or_else(|| {
        bad(
            StatusCode::CONFLICT,
            format!("{name} waits for a node; its files are nowhere yet"),
        )
    })?;
    let mut out = Vec::new();
    loop {
        let cmd = NodeCommand::Read {
            app: name.clone(),
            path: q.path.clone(),
            offset: out.len() as u64,
        };
        let body =
            serde_json::to_vec(&cmd).map_err(|e| bad(StatusCode::BAD_REQUEST, e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(body.into())
            .timeout(Some(RECEIVE_WAIT));
        let answer = s
            .backbone
            .client
            .send_request(command_subject(&node), request)
            .await
            .map_err(|e| {
                bad(
                    StatusCode::CONFLICT,
                    format!("node {node} did not answer: {e}"),
                )
            })?;
        let headers = answer.headers.unwrap_or_default();
        if let Some(e) = headers.get("Tern-Error") {
            return Err(bad(StatusCode::NOT_FOUND, e.as_str().to_owned()));
        }
        let size: u64 = headers
            .get("Tern-Size")
            .and_then(|v| v.as_str().parse().ok())
            .ok_or_else(|| bad(StatusCode::BAD_GATEWAY, format!("node {node} sent no size")))?;
        if size > MAX_COPY {
            return Err(bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} is {size} bytes; tern cp copies at most {MAX_COPY}",
                    q.path
                ),
            ));
        }
        out.extend_from_slice(&answer.payload);
        if answer.payload.len() < READ_CHUNK || out.len() as u64 >= size {
            break;
        }
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        out,
    )
        .into_response())
}
