//! Moving apps through the API: `tern migrate` (a live migration to a node the user
//! names) and `tern drain` (every app off a node: migratable ones live, the others
//! restarted elsewhere) each record moves and answer at once with them; the
//! reconciler (`mover`) carries them out. `tern cp` reads a file of an app's volumes
//! from the node that has them.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, Shared, backbone_down, bad, record, unavailable};
use crate::apps::AppRecord;
use crate::manifest;
use crate::moves::{AskError, MoveRecord};
use crate::protocol::{self, NodeCommand, READ_CHUNK, command_subject};
use crate::scheduler::{Request, Verdict};

/// How long a node may take to answer a read of a file.
const READ_WAIT: Duration = Duration::from_secs(30);
/// The largest file `tern cp` copies.
pub const MAX_COPY: u64 = 256 << 20;

/// `POST /v1/apps/{name}/migrate`'s body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub to: String,
}

/// Records `mv` and puts it in the view at once, so that `tern ps` shows it.
async fn ask(s: &Shared, mv: MoveRecord) -> Result<MoveRecord, ApiError> {
    let (asked, rev) = s.backbone.ask_move(mv).await.map_err(|e| match e {
        AskError::Busy { .. } => bad(StatusCode::CONFLICT, e.to_string()),
        e => backbone_down(e),
    })?;
    if let Ok(mut v) = s.view.write() {
        v.put_move(asked.clone(), rev);
    }
    Ok(asked)
}

/// `POST /v1/apps/{name}/migrate`: records a live migration of the app to the node
/// named, and answers with the move (202); the reconciler carries it out. An app that
/// is still starting moves once it runs.
pub(super) async fn migrate(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let req: MigrateRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            format!("not a migrate request: {e}"),
        )
    })?;
    let to = req.to;
    let (record, _) = record(&s, &name).await?;
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
    {
        let v = s.view.read().map_err(|_| unavailable())?;
        if v.has_ended(&record) {
            return Err(bad(
                StatusCode::CONFLICT,
                format!("{name} has ended; there is nothing to move"),
            ));
        }
        // The destination must pass every filter, as a placement would.
        let c = v.candidates(Some(&name));
        if !c.nodes.iter().any(|n| n.name == to) {
            return Err(bad(
                StatusCode::NOT_FOUND,
                format!("no node named {to}; `tern nodes` lists them"),
            ));
        }
        let excluded = c.excluded();
        let req = Request {
            current: Some(&from),
            exclude: &excluded,
            ..Request::new(&m)
        };
        let e = s.scheduler.explain(&req, &c.nodes, &v.rtt);
        if let Some((_, Verdict::Rejected { rejections })) = e.nodes.iter().find(|(n, _)| *n == to)
        {
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
    let mv = MoveRecord::asked(&record, &from, Some(to), true, "tern migrate".into());
    let asked = ask(&s, mv).await?;
    Ok((StatusCode::ACCEPTED, Json(asked)).into_response())
}

/// `POST /v1/nodes/{name}/drain`: no app is placed on the node any more, and a move is
/// recorded for every app on it: live when it is migratable, else a restart elsewhere.
/// Answers at once with the moves (202).
pub(super) async fn drain(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
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
    let apps: Vec<(AppRecord, u64)> = s.view.read().map_err(|_| unavailable())?.apps_on(&node);
    let mut moves = Vec::new();
    for (record, _) in apps {
        let migratable = manifest::parse(&record.manifest).is_ok_and(|m| m.migratable);
        let mv = MoveRecord::asked(&record, &node, None, migratable, format!("drain {node}"));
        match ask(&s, mv).await {
            Ok(mv) => moves.push(mv),
            // Moving already: that move goes on (a drained node takes nothing back).
            Err(ApiError(StatusCode::CONFLICT, _)) => {
                if let Some(mv) = s
                    .view
                    .read()
                    .ok()
                    .and_then(|v| v.moving(&record.name).cloned())
                {
                    moves.push(mv);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(moves)).into_response())
}

/// `GET /v1/moves`: every app's latest move, under way or over.
pub(super) async fn list(State(s): State<Shared>) -> Result<Json<Vec<MoveRecord>>, ApiError> {
    let v = s.view.read().map_err(|_| unavailable())?;
    let mut moves: Vec<MoveRecord> = v
        .apps()
        .filter_map(|p| v.last_move(&p.record.name).cloned())
        .collect();
    moves.sort_by(|a, b| a.app.cmp(&b.app));
    Ok(Json(moves))
}

/// `GET /v1/moves/{app}`: the app's latest move, as the backbone holds it now; when the
/// backbone is slow to answer, as the control plane's view last saw it.
pub(super) async fn one(
    State(s): State<Shared>,
    Path(app): Path<String>,
) -> Result<Json<MoveRecord>, ApiError> {
    let read = match s.backbone.move_of(&app).await {
        Ok(read) => read,
        Err(e) => {
            let seen = s.view.read().ok().and_then(|v| v.last_move(&app).cloned());
            return seen.map(Json).ok_or_else(|| backbone_down(e));
        }
    };
    match read {
        Some((mv, _)) => Ok(Json(mv)),
        None => Err(bad(
            StatusCode::NOT_FOUND,
            format!("{app} has not been moved"),
        )),
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
            .timeout(Some(READ_WAIT));
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
        if let Some(e) = headers.get(protocol::ERROR) {
            return Err(bad(StatusCode::NOT_FOUND, e.as_str().to_owned()));
        }
        let size: u64 = headers
            .get(protocol::SIZE)
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
