//! The control plane's requests to a node, on `tern.node.NAME.cmd`, and the node's
//! answers.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Host, Local, Order, Start, start};
use crate::apps::AppRecord;
use crate::backbone::Backbone;
use crate::manifest;
use crate::protocol::{self, NodeCommand, NodeReply, READ_CHUNK};

/// Why an instance's migration did not go through.
#[derive(Debug, Clone)]
pub(crate) struct NotMoved {
    pub reason: String,
    /// The guest ended first.
    pub ended: bool,
}

impl NotMoved {
    pub(crate) fn refused(reason: String) -> NotMoved {
        NotMoved {
            reason,
            ended: false,
        }
    }
}

/// Does what the control plane asks of this node, answering on the message's reply
/// subject (at once, or from a task of its own when the answer takes time).
pub(super) async fn command(
    host: &Host,
    backbone: &Backbone,
    message: async_nats::Message,
    running: &mut HashMap<String, Local>,
    ran: &mut HashMap<String, u64>,
    finished: &mpsc::UnboundedSender<(String, u64)>,
) {
    let Some(reply_to) = message.reply.clone() else {
        return;
    };
    let client = backbone.client.clone();
    let answer = |reply: NodeReply| answer_now(client.clone(), reply_to.clone(), reply);
    let failed = |e: String| NodeReply {
        error: Some(e),
        ..NodeReply::default()
    };
    let cmd: NodeCommand = match serde_json::from_slice(&message.payload) {
        Ok(c) => c,
        Err(e) => return answer(failed(format!("not a node command: {e}"))).await,
    };
    match cmd {
        NodeCommand::Receive {
            app,
            incarnation,
            from,
            source,
        } => {
            // Asked again (the control plane lost the answer, or restarted): the same
            // instance answers with where it listens.
            let again = running
                .get(&app)
                .filter(|l| l.incarnation == incarnation)
                .and_then(|l| l.listening.clone());
            if let Some(rx) = again {
                tokio::spawn(answer_listening(client.clone(), reply_to.clone(), rx));
                return;
            }
            if running.contains_key(&app) {
                return answer(failed(format!("{app} runs on {} already", host.node))).await;
            }
            if let Some(why) = host.migration_refused() {
                return answer(failed(why)).await;
            }
            if ran.get(&app).is_some_and(|&r| r >= incarnation) {
                return answer(failed(format!(
                    "incarnation {incarnation} of {app} was here already and ended"
                )))
                .await;
            }
            let record = match backbone.app(&app).await {
                Ok(Some((r, _))) => r,
                Ok(None) => return answer(failed(format!("no app named {app}"))).await,
                Err(e) => return answer(failed(e.to_string())).await,
            };
            let record = AppRecord {
                node: Some(host.node.clone()),
                incarnation,
                ..record
            };
            let (tx, rx) = tokio::sync::watch::channel(None);
            let how = Start::Receive {
                from,
                source,
                listening: tx,
            };
            match start(host, backbone, &record, finished.clone(), how) {
                Ok(local) => {
                    ran.insert(app.clone(), incarnation);
                    running.insert(app, local);
                    tokio::spawn(answer_listening(client.clone(), reply_to.clone(), rx));
                }
                Err(e) => answer(failed(e)).await,
            }
        }
        NodeCommand::Migrate {
            app,
            incarnation,
            to,
            site,
            addr,
        } => {
            // Asked again after it went through: what it measured.
            let done = host
                .migrated
                .lock()
                .ok()
                .and_then(|m| m.get(&(app.clone(), incarnation)).cloned());
            if let Some(moved) = done {
                return answer(NodeReply {
                    moved: Some(moved),
                    ..NodeReply::default()
                })
                .await;
            }
            let Some(local) = running.get(&app).filter(|l| l.incarnation == incarnation) else {
                return answer(failed(format!(
                    "{app} (incarnation {incarnation}) does not run on {}",
                    host.node
                )))
                .await;
            };
            // Through the emulated link to the destination's site, if there is one: the
            // relay lives until the migration has ended.
            let relay = match host.links.get(&site).filter(|_| site != host.site) {
                Some(shape) => match crate::emulate::Link::start(addr.clone(), *shape) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        return answer(failed(format!("no emulated link to {site}: {e}"))).await;
                    }
                },
                None => None,
            };
            let addr = relay.as_ref().map_or(addr, |r| r.addr.clone());
            if let Some(why) = host.migration_refused() {
                return answer(failed(why)).await;
            }
            // Over TLS to the destination node the move names, when this node has a
            // certificate: the instance connects to a loopback end of it.
            let outbound = match &host.tls {
                Some(tls) => match crate::tunnel::Outbound::start(tls, addr.clone(), &to).await {
                    Ok(o) => Some(o),
                    Err(e) => return answer(failed(format!("no way out to {to}: {e}"))).await,
                },
                None => None,
            };
            let addr = outbound.as_ref().map_or(addr, |o| o.addr.clone());
            let (tx, rx) = oneshot::channel();
            let _ = local.orders.send(Order::Migrate {
                addr,
                to,
                reply: tx,
            });
            let (client, reply_to) = (client.clone(), reply_to.clone());
            tokio::spawn(async move {
                let _relay = relay;
                let reply = match rx.await {
                    Ok(Ok(moved)) => NodeReply {
                        moved: Some(moved),
                        ..NodeReply::default()
                    },
                    // A destination refused on the way says why, rather than the
                    // instance's "connection closed".
                    Ok(Err(e)) => NodeReply {
                        ended: e.ended,
                        ..failed(
                            outbound
                                .as_ref()
                                .and_then(crate::tunnel::Outbound::failure)
                                .unwrap_or(e.reason),
                        )
                    },
                    // The instance went away without a word on its migration.
                    Err(_) => NodeReply {
                        ended: true,
                        ..failed("its instance ended during the migration".into())
                    },
                };
                answer_now(client, reply_to, reply).await;
            });
        }
        NodeCommand::Cancel { app, incarnation } => {
            if let Some(local) = running.get(&app).filter(|l| l.incarnation == incarnation) {
                let _ = local.orders.send(Order::Kill);
                ran.remove(&app);
            }
            answer(NodeReply::default()).await;
        }
        NodeCommand::Read { app, path, offset } => {
            let dir = ran
                .get(&app)
                .map(|inc| host.state.join("apps").join(&app).join(inc.to_string()));
            let backbone = backbone.clone();
            tokio::spawn(async move {
                let result = match dir {
                    Some(dir) => read_volume_file(&backbone, &app, &dir, &path, offset).await,
                    None => Err(format!("{app} has no files on this node")),
                };
                let mut headers = async_nats::HeaderMap::new();
                let body = match result {
                    Ok((size, bytes)) => {
                        headers.insert(protocol::SIZE, size.to_string().as_str());
                        bytes
                    }
                    Err(e) => {
                        headers.insert(protocol::ERROR, e.as_str());
                        Vec::new()
                    }
                };
                let _ = backbone
                    .client
                    .publish_with_headers(reply_to, headers, body.into())
                    .await;
            });
        }
    }
}

/// Answers, on `to`, where a migration's destination listens once it does (or why it
/// will not), within 30 s.
async fn answer_listening(
    client: async_nats::Client,
    to: async_nats::Subject,
    mut rx: tokio::sync::watch::Receiver<Option<Result<String, String>>>,
) {
    let known = tokio::time::timeout(Duration::from_secs(30), async {
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .map(|v| (*v).clone())
    })
    .await;
    let reply = match known {
        Ok(Some(Some(Ok(addr)))) => NodeReply {
            addr: Some(addr),
            ..NodeReply::default()
        },
        Ok(Some(Some(Err(e)))) => NodeReply {
            error: Some(e),
            ..NodeReply::default()
        },
        _ => NodeReply {
            error: Some("the receiving instance did not start listening".into()),
            ..NodeReply::default()
        },
    };
    answer_now(client, to, reply).await;
}

/// Sends `reply` to `to`.
async fn answer_now(client: async_nats::Client, to: async_nats::Subject, reply: NodeReply) {
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    let _ = client.publish(to, body.into()).await;
}

/// Reads up to [`READ_CHUNK`] bytes at `offset` of the file at guest path `path` of
/// `app`, whose instance files are in `dir`; returns the file's size and the bytes.
async fn read_volume_file(
    backbone: &Backbone,
    app: &str,
    dir: &Path,
    path: &str,
    offset: u64,
) -> Result<(u64, Vec<u8>), String> {
    let record = backbone
        .app(app)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no app named {app}"))?
        .0;
    let m = manifest::parse(&record.manifest).map_err(|e| e.to_string())?;
    // The volume whose guest path is the longest prefix of `path`.
    let (index, rest) = m
        .volumes
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let rest = path.strip_prefix(v.guest.trim_end_matches('/'))?;
            (rest.is_empty() || rest.starts_with('/')).then(|| (i, rest.trim_start_matches('/')))
        })
        .max_by_key(|(_, rest)| std::cmp::Reverse(rest.len()))
        .ok_or_else(|| {
            let names: Vec<&str> = m.volumes.iter().map(|v| v.guest.as_str()).collect();
            format!(
                "{path} is in no volume of {app} (its volumes: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })?;
    let rel = Path::new(rest);
    if rest.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "{path}: give a file inside the volume, without `..`"
        ));
    }
    let volume = dir.join("volumes").join(index.to_string());
    let target = volume.join(rel);
    let rest = rest.to_owned();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Seek as _};
        // No link is followed out of the volume: the guest may have made any.
        let real = target.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        let root = volume.canonicalize().map_err(|e| format!("{path}: {e}"))?;
        if !real.starts_with(&root) {
            return Err(format!("{path} leads out of its volume"));
        }
        let mut f = std::fs::File::open(&real).map_err(|e| format!("{path}: {e}"))?;
        let meta = f.metadata().map_err(|e| format!("{path}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{path} ({rest}) is not a file"));
        }
        f.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| format!("{path}: {e}"))?;
        let mut bytes = Vec::with_capacity(READ_CHUNK);
        f.take(READ_CHUNK as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{path}: {e}"))?;
        Ok((meta.len(), bytes))
    })
    .await
    .map_err(|e| e.to_string())?
}
