//! The API's deployments: upload a module, deploy, list, remove, read output, explain.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, Shared, backbone_down, bad, plan_of, record, unavailable};
use crate::apps::{AppRecord, AppView, SeedFile};
use crate::manifest::{self, Manifest};
use crate::scheduler::Request;

/// The largest module (or seed file) the API takes.
pub const MAX_MODULE: usize = 64 << 20;

/// `POST /v1/apps`: a manifest and what it refers to, uploaded first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The manifest's text (its `module` may be a path: `module` below replaces it).
    pub manifest: String,
    /// SHA-256 (hex) of the uploaded module.
    pub module: String,
    #[serde(default)]
    pub seeds: Vec<SeedFile>,
    /// The module's signatures (`tern sign`), checked against the manifest's
    /// `signed_by`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<tern_trust::Signatures>,
}

/// `POST /v1/apps`' answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub node: String,
    pub note: String,
}

fn is_digest(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// `PUT /v1/modules/{digest}`: stores a module or seed file whose SHA-256 is `digest`.
pub(super) async fn put_module(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(digest): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    if !is_digest(&digest) {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "a module is stored under its SHA-256, 64 lowercase hex digits",
        ));
    }
    if tern_runtime::digest(&body) != digest {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body's SHA-256 is not {digest}: it was damaged or cut short"),
        ));
    }
    let stored = s.backbone.put_module(&body).await.map_err(backbone_down)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "digest": stored, "size": body.len() })),
    )
        .into_response())
}

/// `POST /v1/apps`: checks the manifest and the module, places the app and records it.
pub(super) async fn deploy(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    let req: DeployRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(
            StatusCode::BAD_REQUEST,
            format!("not a deploy request: {e}"),
        )
    })?;
    let m = manifest::parse(&req.manifest).map_err(|e| {
        bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid manifest: {e}"),
        )
    })?;
    let names = replica_names(&m);
    if let Some(long) = names.iter().find(|n| !manifest::valid_name(n)) {
        return Err(bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "invalid manifest: name: its replicas would be named up to {long}, over 63 characters"
            ),
        ));
    }
    if !is_digest(&req.module) {
        return Err(bad(
            StatusCode::BAD_REQUEST,
            "module: give the SHA-256 of an uploaded module",
        ));
    }
    for seed in &req.seeds {
        if !m.volumes.iter().any(|v| v.guest == seed.volume) || !is_digest(&seed.digest) {
            return Err(bad(
                StatusCode::BAD_REQUEST,
                format!(
                    "seed file {}/{}: no such volume in the manifest, or no digest",
                    seed.volume, seed.path
                ),
            ));
        }
    }
    check_signatures(&req, &m)?;
    check_module(&s, &req.module, m.migratable, m.memory).await?;
    // The same deployment again (a client that timed out and tried again, or a script
    // run twice) changes nothing and says so: deploying is safe to repeat.
    if let Some(same) = deployed_already(&s, &req, &names)? {
        return Ok((StatusCode::OK, Json(same)).into_response());
    }
    // The view answers at once for the usual new name; the create below is the
    // authority for one app. Replicas are written one by one, so their names are read
    // from the backbone first: a deployment is not left half written.
    for name in std::iter::once(&m.name).chain(&names) {
        let in_view = s
            .view
            .read()
            .map_err(|_| unavailable())?
            .app(name)
            .is_some();
        if in_view
            || (names.len() > 1 && s.backbone.app(name).await.map_err(backbone_down)?.is_some())
        {
            return Err(taken(name));
        }
    }
    let placed: Vec<String> = {
        let mut v = s.view.write().map_err(|_| unavailable())?;
        let placed = place_replicas(&s.scheduler, &v, &m, &names)
            .map_err(|e| bad(StatusCode::CONFLICT, e))?;
        // Claimed under the same lock: deploys made at once do not all take the same
        // room before their records are written.
        for (name, node) in names.iter().zip(&placed) {
            v.claim(name, node, m.memory);
        }
        placed
    };
    let written = record_placed(&s, &req, &m, &names, &placed).await;
    if written.is_err()
        && let Ok(mut v) = s.view.write()
    {
        for name in &names {
            v.release(name);
        }
    }
    let written = written?;
    let note = if m.replicas > 1 {
        format!("{} replicas: {}", m.replicas, written.join(", "))
    } else {
        format!("placed on {}", placed[0])
    };
    Ok((
        StatusCode::CREATED,
        Json(Deployed {
            name: m.name,
            node: placed[0].clone(),
            note,
        }),
    )
        .into_response())
}

/// When every one of `names` is deployed already from this very request (the same
/// manifest, module, seed files and signatures), what `deploy` answered, with a note
/// that nothing changed.
fn deployed_already(
    s: &Shared,
    req: &DeployRequest,
    names: &[String],
) -> Result<Option<Deployed>, ApiError> {
    let v = s.view.read().map_err(|_| unavailable())?;
    // The deployment's name (`NAME` of replicas `NAME-1` …), and where each app is.
    let mut deployment = None;
    let mut placed = Vec::new();
    for name in names {
        let Some(r) = v.app(name).map(|p| &p.record) else {
            return Ok(None);
        };
        if (&r.manifest, &r.module, &r.seeds, &r.signatures)
            != (&req.manifest, &req.module, &req.seeds, &req.signatures)
        {
            return Ok(None);
        }
        deployment.get_or_insert_with(|| r.replica_of.clone().unwrap_or_else(|| name.clone()));
        placed.push((name, r.node.clone().unwrap_or_else(|| "—".to_owned())));
    }
    let (Some(name), Some((_, node))) = (deployment, placed.first()) else {
        return Ok(None);
    };
    Ok(Some(Deployed {
        name,
        node: node.clone(),
        note: format!(
            "deployed already with this manifest and module, unchanged: {}",
            placed
                .iter()
                .map(|(n, node)| format!("{n} on {node}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }))
}

/// Writes the records of `names` placed on `placed`; what was written, one `NAME on
/// NODE` each.
async fn record_placed(
    s: &Shared,
    req: &DeployRequest,
    m: &Manifest,
    names: &[String],
    placed: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut written = Vec::new();
    for (name, node) in names.iter().zip(placed) {
        // Incarnations go on from those of an app of the same name removed before, so
        // that nothing it left behind (a late status) is taken for this one's.
        // (A name the view has never seen a status of has none to read.)
        let seen = s
            .view
            .read()
            .map_err(|_| unavailable())?
            .status(name)
            .is_some();
        let before = if seen {
            s.backbone
                .status(name)
                .await
                .map_err(backbone_down)?
                .map_or(0, |st| st.incarnation)
        } else {
            0
        };
        let record = AppRecord {
            name: name.clone(),
            manifest: req.manifest.clone(),
            module: req.module.clone(),
            seeds: req.seeds.clone(),
            node: Some(node.clone()),
            incarnation: before + 1,
            restarts: 0,
            restore: None,
            note: format!("placed on {node}"),
            replica_of: (m.replicas > 1).then(|| m.name.clone()),
            signatures: req.signatures.clone(),
        };
        match s
            .backbone
            .put_app(&record, 0)
            .await
            .map_err(backbone_down)?
        {
            Some(rev) => {
                written.push(format!("{name} on {node}"));
                // In the view at once: the next placement counts it, and `tern ps`
                // shows it, without waiting for the watch.
                if let Ok(mut v) = s.view.write() {
                    v.put_app(record, rev);
                }
            }
            None => return Err(taken(name)),
        }
    }
    Ok(written)
}

/// The apps a manifest deploys: `NAME`, or its replicas `NAME-1` … `NAME-N`.
pub(super) fn replica_names(m: &Manifest) -> Vec<String> {
    if m.replicas > 1 {
        (1..=m.replicas)
            .map(|i| format!("{}-{i}", m.name))
            .collect()
    } else {
        vec![m.name.clone()]
    }
}

/// Where each of `names` (the apps of `m`) goes, one after another, each placed with
/// the ones before it counted: their memory reserved, and their sites known to the
/// spread. One line naming every node's reasons when one cannot be placed.
pub(super) fn place_replicas(
    scheduler: &crate::scheduler::Scheduler,
    v: &super::view::View,
    m: &Manifest,
    names: &[String],
) -> Result<Vec<String>, String> {
    let mut c = v.candidates(None);
    let excluded = super::view::exclusions(&c.excluded);
    let mut by_site: std::collections::HashMap<String, u32> = Default::default();
    let mut placed = Vec::new();
    for name in names {
        let req = Request {
            exclude: &excluded,
            replicas_by_site: Some(&by_site),
            ..Request::new(m)
        };
        let Some(i) = scheduler.place(&req, &c.nodes, &v.rtt) else {
            return Err(no_node(name, &scheduler.explain(&req, &c.nodes, &v.rtt)));
        };
        c.nodes[i].load.memory += m.memory;
        c.nodes[i].load.instances += 1;
        *by_site.entry(c.nodes[i].site.clone()).or_default() += 1;
        placed.push(c.nodes[i].name.clone());
    }
    Ok(placed)
}

fn taken(name: &str) -> ApiError {
    bad(
        StatusCode::CONFLICT,
        format!("an app named {name} is deployed already; remove it first with `tern rm {name}`"),
    )
}

/// One line naming why each node was refused.
pub(super) fn no_node(name: &str, e: &crate::scheduler::Explanation) -> String {
    use crate::scheduler::Verdict;
    let reasons: Vec<String> = e
        .nodes
        .iter()
        .filter_map(|(node, v)| match v {
            Verdict::Rejected { rejections } => Some(format!(
                "{node}: {}",
                rejections
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Verdict::Eligible { .. } => None,
        })
        .collect();
    if reasons.is_empty() {
        format!("no node can take {name}: no node has joined the continuum")
    } else {
        format!("no node can take {name}: {}", reasons.join("; "))
    }
}

/// Refuses a deployment whose module's signatures do not verify, or lack a key its
/// manifest's `signed_by` requires (the digest is checked here; each node checks the
/// module's bytes against it before it runs any of them).
fn check_signatures(req: &DeployRequest, m: &manifest::Manifest) -> Result<(), ApiError> {
    tern_trust::sign::check_digest(&req.module, req.signatures.as_ref(), &m.signed_by)
        .map(|_| ())
        .map_err(|e| {
            bad(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("module sha256:{} refused: {e}", req.module),
            )
        })
}

/// What deploys need to know of a module, found once per digest.
#[derive(Debug, Clone)]
pub(super) struct ModuleFacts {
    /// Why it does not validate, if it does not.
    invalid: Option<String>,
    /// The bytes its memories start with.
    initial: u64,
    /// Whether it can be made migratable (why not), once a deploy asked.
    migratable: Option<Result<(), String>>,
}

/// The most modules whose facts are kept; past it they are found again.
const MODULE_FACTS: usize = 1024;

/// Refuses a module that was not uploaded, does not validate, whose memory starts
/// larger than the manifest's `limits.memory`, or that cannot be made migratable when
/// the manifest asks for it. The module is read and checked once per digest.
async fn check_module(
    s: &Shared,
    digest: &str,
    migratable: bool,
    memory: u64,
) -> Result<(), ApiError> {
    let known = s.modules.lock().ok().and_then(|m| m.get(digest).cloned());
    let facts = match known {
        Some(f) if f.migratable.is_some() || !migratable => f,
        _ => {
            let wasm = s.backbone.module(digest).await.map_err(|_| {
                bad(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "module sha256:{digest} was not uploaded (PUT /v1/modules/DIGEST first)"
                    ),
                )
            })?;
            let facts = tokio::task::spawn_blocking(move || {
                let invalid = wasmparser::validate(&wasm)
                    .err()
                    .map(|e| format!("the module does not validate: {e}"));
                let checkable = invalid.is_none() && migratable;
                ModuleFacts {
                    initial: if invalid.is_none() {
                        initial_memory(&wasm)
                    } else {
                        0
                    },
                    migratable: checkable.then(|| {
                        tern_snapshot::Rewriter::new(None)
                            .rewrite(&wasm)
                            .map(|_| ())
                            .map_err(|e| format!("migratable = true, but {e}"))
                    }),
                    invalid,
                }
            })
            .await
            .map_err(|e| bad(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
            if let Ok(mut m) = s.modules.lock() {
                if m.len() >= MODULE_FACTS {
                    m.clear();
                }
                m.insert(digest.to_owned(), facts.clone());
            }
            facts
        }
    };
    let refuse = |e: String| Err(bad(StatusCode::UNPROCESSABLE_ENTITY, e));
    if let Some(e) = facts.invalid {
        return refuse(e);
    }
    if facts.initial > memory {
        return refuse(format!(
            "limits.memory: {} KiB is below the {} KiB the module's memory starts with; it could never start",
            memory >> 10,
            facts.initial >> 10
        ));
    }
    match facts.migratable {
        Some(Err(e)) if migratable => refuse(e),
        _ => Ok(()),
    }
}

/// The bytes a (valid) module's memories start with, imported ones included.
fn initial_memory(wasm: &[u8]) -> u64 {
    let mut total = 0u64;
    for payload in wasmparser::Parser::new(0).parse_all(wasm).flatten() {
        let page = |m: &wasmparser::MemoryType| {
            m.initial
                .saturating_mul(1u64 << m.page_size_log2.unwrap_or(16))
        };
        match payload {
            wasmparser::Payload::MemorySection(r) => {
                total += r.into_iter().flatten().map(|m| page(&m)).sum::<u64>();
            }
            wasmparser::Payload::ImportSection(r) => {
                for import in r.into_imports().flatten() {
                    if let wasmparser::TypeRef::Memory(m) = import.ty {
                        total += page(&m);
                    }
                }
            }
            _ => {}
        }
    }
    total
}

/// `GET /v1/apps`: every app, by name, from the control plane's view (no read of the
/// backbone: the view follows every record and status as they change).
pub(super) async fn list(State(s): State<Shared>) -> Result<Json<Vec<AppView>>, ApiError> {
    let v = s.view.read().map_err(|_| unavailable())?;
    Ok(Json(
        v.apps()
            .map(|p| {
                AppView::of(&p.record, v.status(&p.record.name)).with_move(v.moving(&p.record.name))
            })
            .collect(),
    ))
}

/// `DELETE /v1/apps/{name}`: the node running it stops it; its output is forgotten.
pub(super) async fn remove(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    s.authorize(&headers)?;
    // NAME is one app, the replicas NAME-1 … NAME-N of a deployment, or both.
    let mut names: Vec<String> = {
        let v = s.view.read().map_err(|_| unavailable())?;
        v.apps()
            .filter(|p| p.record.replica_of.as_deref() == Some(name.as_str()))
            .map(|p| p.record.name.clone())
            .collect()
    };
    if names.is_empty() {
        record(&s, &name).await?;
        names.push(name.clone());
    } else if s
        .backbone
        .app(&name)
        .await
        .map_err(backbone_down)?
        .is_some()
    {
        names.insert(0, name.clone());
    }
    for n in &names {
        s.backbone.remove_app(n).await.map_err(backbone_down)?;
        let _ = s.backbone.purge_logs(n).await;
        let _ = s.backbone.forget_moves(n).await;
        if let Ok(mut v) = s.view.write() {
            v.forget_moves(n);
        }
    }
    Ok(Json(serde_json::json!({ "removed": names })))
}

#[derive(Debug, Deserialize)]
pub(super) struct LogsQuery {
    #[serde(default)]
    after: u64,
}

/// The most output one `GET …/logs` returns; ask again after its last sequence.
const LOGS_PER_ANSWER: usize = 4 << 20;

/// `GET /v1/apps/{name}/logs?after=SEQ`: the app's output after stream sequence `SEQ`,
/// as frames `SEQ out|err LEN\n` followed by LEN bytes.
pub(super) async fn logs(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    s.authorize(&headers)?;
    record(&s, &name).await?;
    let chunks = s
        .backbone
        .logs(&name, q.after, LOGS_PER_ANSWER)
        .await
        .map_err(backbone_down)?;
    let mut body = Vec::new();
    for c in chunks {
        body.extend_from_slice(
            format!(
                "{} {} {}\n",
                c.seq,
                match (c.note, c.stderr) {
                    (true, _) => "note",
                    (false, true) => "err",
                    (false, false) => "out",
                },
                c.bytes.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(&c.bytes);
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ExplainQuery {
    why_not: Option<String>,
}

/// `GET /v1/apps/{name}/explain[?why_not=NODE]`: every node's verdict on the app now,
/// as `POST /v1/plan` answers, with the node it runs on.
pub(super) async fn explain(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Query(q): Query<ExplainQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (r, _) = record(&s, &name).await?;
    let m: Manifest = manifest::parse(&r.manifest).map_err(|e| {
        bad(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the stored manifest no longer reads: {e}"),
        )
    })?;
    let v = s.view.read().map_err(|_| unavailable())?;
    let c = v.candidates(Some(&name));
    if let Some(n) = &q.why_not
        && !c.nodes.iter().any(|d| &d.name == n)
    {
        return Err(bad(
            StatusCode::NOT_FOUND,
            format!("no node named {n}; `tern nodes` lists them"),
        ));
    }
    let excluded = c.excluded();
    let mut req = Request::new(&m);
    req.current = r.node.as_deref();
    req.exclude = &excluded;
    let mut plan = plan_of(s.scheduler.explain(&req, &c.nodes, &v.rtt));
    if let Some(n) = &q.why_not {
        plan.nodes
            .retain(|v| v.get("node").and_then(|x| x.as_str()) == Some(n.as_str()));
    }
    Ok(Json(serde_json::json!({
        "name": name,
        "node": r.node,
        "note": r.note,
        "chosen": plan.chosen,
        "nodes": plan.nodes,
    })))
}
