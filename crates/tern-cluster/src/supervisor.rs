//! A node's instances: the agent watches the deployments, starts each incarnation
//! placed on it in a `tern instance` process of its own, publishes its output, takes
//! its periodic checkpoints to the object store, reports its status, and stops it when
//! the app is removed or placed elsewhere.
//!
//! An instance's files live in `STATE/apps/APP/INCARNATION/`: the module, its volumes
//! (`volumes/N`), the spec and the last checkpoint bundle.
//!
//! The control plane asks a node for what a watch cannot say, as requests on
//! `tern.node.NAME.cmd` ([`NodeCommand`]): to receive an app's live migration, to send
//! one, to give up one that failed, and to read an app's volume files.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::apps::{AppEvent, AppRecord, CheckpointRef, HANDOVER_WAIT, InstanceStatus, now_ms};
use crate::backbone::{Backbone, BackboneError};
use crate::instance::{Command, Ended, Event, InstanceSpec};
use crate::manifest;
use crate::model::{InstanceState, NodeLoad};

/// What a node's supervisor needs to know of the node.
#[derive(Debug, Clone)]
pub struct Host {
    pub node: String,
    /// The host other nodes reach this one at (that of its link): incoming migrations
    /// listen there.
    pub link_host: String,
    pub site: String,
    /// Emulated links to other sites, by site: a migration to a node there goes
    /// through a relay of that shape.
    pub links: std::collections::BTreeMap<String, crate::emulate::Shape>,
    pub engine: tern_runtime::EngineKind,
    /// Where instances keep their files.
    pub state: PathBuf,
    /// The `tern` program, which runs each instance (`tern instance SPEC`).
    pub tern: PathBuf,
}

/// A request of the control plane to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum NodeCommand {
    /// Start incarnation `incarnation` of `app` as the destination of a live migration
    /// from incarnation `from`; the answer is where it listens.
    Receive {
        app: String,
        incarnation: u64,
        from: u64,
    },
    /// Live-migrate incarnation `incarnation` of `app` to `addr` (node `to`); the
    /// answer comes when the destination has it, or the migration failed.
    Migrate {
        app: String,
        incarnation: u64,
        to: String,
        /// The destination's site.
        site: String,
        addr: String,
    },
    /// Give up incarnation `incarnation` of `app` (a migration to here failed).
    Cancel { app: String, incarnation: u64 },
    /// Up to [`READ_CHUNK`] bytes of a file in `app`'s volumes from `offset`: the
    /// answer's payload, with headers `Tern-Size` (the file's) or `Tern-Error`.
    Read {
        app: String,
        path: String,
        offset: u64,
    },
}

/// A node's answer to a [`NodeCommand`] other than `Read`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
}

/// What a live migration between nodes measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub rounds: u32,
    pub bytes: u64,
}

/// The most bytes one `Read` answers (NATS messages stay under 1 MiB).
pub const READ_CHUNK: usize = 512 << 10;

/// The subject a node takes its commands on.
pub fn command_subject(node: &str) -> String {
    format!("tern.node.{node}.cmd")
}

/// Orders for one instance's task.
#[derive(Debug)]
enum Order {
    /// End it at once (the app was removed or placed elsewhere).
    Kill,
    /// Checkpoint it and end it (the node is stopping).
    Stop,
    /// Live-migrate it to `addr`, on node `to`.
    Migrate {
        addr: String,
        to: String,
        reply: oneshot::Sender<Result<Moved, String>>,
    },
}

/// How an instance starts.
enum Start {
    /// Afresh, or from its checkpoint.
    Run,
    /// As the destination of a migration from incarnation `from`; where it listens is
    /// told on `listening`.
    Receive {
        from: u64,
        listening: oneshot::Sender<Result<String, String>>,
    },
}

struct Local {
    incarnation: u64,
    memory: u64,
    /// The instance's process.
    pid: Option<u32>,
    orders: mpsc::UnboundedSender<Order>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs `host`'s instances until `stop` completes; then checkpoints and stops the
/// migratable ones (so that they resume from there) and ends the others. `load` is
/// kept up to date for the heartbeats.
///
/// # Errors
/// When the deployments cannot be watched.
pub async fn supervise(
    host: Host,
    backbone: Backbone,
    load: Arc<Mutex<NodeLoad>>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), BackboneError> {
    let mut events = Box::pin(backbone.watch_apps().await?);
    let mut commands = backbone
        .client
        .subscribe(command_subject(&host.node))
        .await
        .map_err(|e| crate::backbone::js_err("node commands", e))?;
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<(String, u64)>();
    let mut running: HashMap<String, Local> = HashMap::new();
    // The last incarnation of each app that ran here: never run twice.
    let mut ran: HashMap<String, u64> = HashMap::new();
    // Each app's record as last seen.
    let mut latest: HashMap<String, AppRecord> = HashMap::new();
    let mut sampling = tokio::time::interval(crate::backbone::HEARTBEAT);
    let mut usage = Usage::default();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = sampling.tick() => {
                let (cpu, used) = usage.sample(running.values().filter_map(|l| l.pid));
                if let Ok(mut l) = load.lock() {
                    l.cpu = cpu;
                    l.used = used;
                }
            }
            event = events.next() => match event {
                Some(Ok(AppEvent::Put(record, _))) => {
                    let app = record.name.clone();
                    if let Some(local) = running.get(&app)
                        && record.incarnation >= local.incarnation
                        && record.node.as_deref() != Some(host.node.as_str())
                    {
                        let _ = local.orders.send(Order::Kill);
                    }
                    latest.insert(app.clone(), *record);
                    reconcile(&host, &backbone, &app, &latest, &mut running, &mut ran, &finished_tx).await;
                }
                Some(Ok(AppEvent::Removed(app))) => {
                    if let Some(local) = running.get(&app) {
                        let _ = local.orders.send(Order::Kill);
                    }
                    latest.remove(&app);
                    ran.remove(&app);
                    let _ = tokio::fs::remove_dir_all(host.state.join("apps").join(&app)).await;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "deployments"),
                None => return Err(crate::backbone::js_err("watch apps", "the watch ended")),
            },
            Some(message) = commands.next() => {
                command(&host, &backbone, message, &mut running, &mut ran, &finished_tx).await;
            }
            Some((app, incarnation)) = finished.recv() => {
                if running.get(&app).is_some_and(|l| l.incarnation == incarnation) {
                    running.remove(&app);
                    // A later incarnation placed here while this one was ending.
                    reconcile(&host, &backbone, &app, &latest, &mut running, &mut ran, &finished_tx).await;
                }
            }
        }
        if let Ok(mut l) = load.lock() {
            l.instances = running.len() as u32;
            l.memory = running.values().map(|r| r.memory).sum();
        }
    }
    // Stopping: checkpoint what can be resumed, end the rest, and wait for them all.
    for local in running.values() {
        let _ = local.orders.send(Order::Stop);
    }
    for (_, local) in running {
        if tokio::time::timeout(Duration::from_secs(30), local.task)
            .await
            .is_err()
        {
            tracing::warn!("an instance did not stop within 30 s");
        }
    }
    Ok(())
}

/// What the instances' processes use, read from `/proc`: CPU time between two samples,
/// and resident memory.
#[derive(Default)]
struct Usage {
    /// CPU ticks of each process at the last sample, and when it was taken.
    ticks: HashMap<u32, u64>,
    at: Option<std::time::Instant>,
}

impl Usage {
    /// Cores busy since the last sample, and resident bytes, over `pids`.
    fn sample(&mut self, pids: impl Iterator<Item = u32>) -> (f64, u64) {
        // The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 on Linux.
        const TICKS_PER_SECOND: f64 = 100.0;
        const PAGE: u64 = 4096;
        let now = std::time::Instant::now();
        let elapsed = self.at.map(|a| now.duration_since(a).as_secs_f64());
        let mut ticks = HashMap::new();
        let (mut busy, mut used) = (0u64, 0u64);
        for pid in pids {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command name (which may hold spaces), in parentheses.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
            let t = fields
                .get(11)
                .zip(fields.get(12))
                .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?));
            if let Some(t) = t {
                busy += t.saturating_sub(self.ticks.get(&pid).copied().unwrap_or(t));
                ticks.insert(pid, t);
            }
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
            used += statm
                .split_whitespace()
                .nth(1)
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0)
                * PAGE;
        }
        self.ticks = ticks;
        self.at = Some(now);
        let cpu = match elapsed {
            Some(e) if e > 0.0 => busy as f64 / TICKS_PER_SECOND / e,
            _ => 0.0,
        };
        (cpu, used)
    }
}

/// Starts `app`'s incarnation if its record places it here, it has not run here yet,
/// and no earlier one still runs here (that one is ending: its end calls this again).
async fn reconcile(
    host: &Host,
    backbone: &Backbone,
    app: &str,
    latest: &HashMap<String, AppRecord>,
    running: &mut HashMap<String, Local>,
    ran: &mut HashMap<String, u64>,
    finished: &mpsc::UnboundedSender<(String, u64)>,
) {
    let Some(record) = latest.get(app) else {
        return;
    };
    let mine = record.node.as_deref() == Some(host.node.as_str());
    let fresh = ran.get(app).is_none_or(|&r| record.incarnation > r);
    if !mine || !fresh || running.contains_key(app) {
        return;
    }
    ran.insert(app.to_owned(), record.incarnation);
    match start(host, backbone, record, finished.clone(), Start::Run).await {
        Ok(local) => {
            running.insert(app.to_owned(), local);
        }
        Err(reason) => {
            tracing::warn!(%app, %reason, "instance did not start");
            let failed = InstanceState::Failed {
                reason: reason.clone(),
            };
            report(backbone, host, record, failed, None, &reason).await;
        }
    }
}

/// Does what the control plane asks of this node, answering on the message's reply
/// subject (at once, or from a task of its own when the answer takes time).
async fn command(
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
        } => {
            if running.contains_key(&app) {
                return answer(failed(format!("{app} runs on {} already", host.node))).await;
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
            let (tx, rx) = oneshot::channel();
            let how = Start::Receive {
                from,
                listening: tx,
            };
            match start(host, backbone, &record, finished.clone(), how).await {
                Ok(local) => {
                    ran.insert(app.clone(), incarnation);
                    running.insert(app, local);
                    let (client, reply_to) = (client.clone(), reply_to.clone());
                    tokio::spawn(async move {
                        let reply = match tokio::time::timeout(Duration::from_secs(30), rx).await {
                            Ok(Ok(Ok(addr))) => NodeReply {
                                addr: Some(addr),
                                ..NodeReply::default()
                            },
                            Ok(Ok(Err(e))) => failed(e),
                            _ => failed("the receiving instance did not start listening".into()),
                        };
                        answer_now(client, reply_to, reply).await;
                    });
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
                    Ok(Err(e)) => failed(e),
                    Err(_) => failed("the instance ended during the migration".into()),
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
                        headers.insert("Tern-Size", size.to_string().as_str());
                        bytes
                    }
                    Err(e) => {
                        headers.insert("Tern-Error", e.as_str());
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

/// Lays out the instance's files and starts its process and task.
async fn start(
    host: &Host,
    backbone: &Backbone,
    record: &AppRecord,
    finished: mpsc::UnboundedSender<(String, u64)>,
    how: Start,
) -> Result<Local, String> {
    let manifest = manifest::parse(&record.manifest).map_err(|e| format!("manifest: {e}"))?;
    let dir = host
        .state
        .join("apps")
        .join(&record.name)
        .join(record.incarnation.to_string());
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let err = |e: std::io::Error| format!("{}: {e}", dir.display());
    tokio::fs::create_dir_all(&dir).await.map_err(err)?;
    let wasm = backbone
        .module(&record.module)
        .await
        .map_err(|e| e.to_string())?;
    let module = dir.join("module.wasm");
    tokio::fs::write(&module, &wasm).await.map_err(err)?;
    let mut volumes = Vec::new();
    for (i, v) in manifest.volumes.iter().enumerate() {
        let host_dir = dir.join("volumes").join(i.to_string());
        tokio::fs::create_dir_all(&host_dir).await.map_err(err)?;
        volumes.push((host_dir, v.guest.clone()));
    }
    // Resume from the checkpoint of this very incarnation if it ran here before (the
    // node or the continuum was stopped), else from the one the placement names.
    let receiving = matches!(how, Start::Receive { .. });
    let status = backbone.status(&record.name).await.ok().flatten();
    let resumed = status
        .as_ref()
        .filter(|s| s.incarnation == record.incarnation)
        .and_then(|s| s.checkpoint.clone());
    let restore_from = resumed
        .or_else(|| record.restore.clone())
        .filter(|_| !receiving);
    let restore = match &restore_from {
        _ if receiving => None,
        Some(c) if manifest.migratable => {
            let bytes = backbone
                .snapshot(&c.digest)
                .await
                .map_err(|e| e.to_string())?;
            let path = dir.join("restore.tar");
            tokio::fs::write(&path, bytes).await.map_err(err)?;
            Some(path)
        }
        _ => {
            seed(backbone, record, &volumes).await?;
            None
        }
    };
    let control_path = dir.join("control.sock");
    let control = tokio::net::UnixListener::bind(&control_path).map_err(err)?;
    let spec = InstanceSpec {
        app: record.name.clone(),
        module,
        args: std::iter::once(record.name.clone())
            .chain(manifest.args.iter().cloned())
            .collect(),
        env: manifest.env.clone().into_iter().collect(),
        volumes,
        memory: manifest.memory,
        engine: host.engine,
        migratable: manifest.migratable,
        restore,
        receive: receiving.then(|| format!("{}:0", host.link_host)),
        checkpoint: dir.join("checkpoint.tar"),
        control: control_path,
        cache: Some(host.state.join("cache")),
    };
    let spec_path = dir.join("spec.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
    tokio::fs::write(&spec_path, json).await.map_err(err)?;

    let mut command = tokio::process::Command::new(&host.tern);
    command
        .arg("instance")
        .arg(&spec_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Not in the terminal's process group: a Ctrl-C meant for `tern up` must not
        // kill instances before their node checkpoints them.
        .process_group(0)
        .kill_on_drop(true);
    // The instance dies with its agent, even one killed with SIGKILL.
    crate::backbone::die_with_parent(&mut command, rustix::process::Signal::KILL);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start `{} instance`: {e}", host.tern.display()))?;
    let pid = child.id();
    let (orders_tx, orders) = mpsc::unbounded_channel();
    let published = backbone
        .last_output(&record.name)
        .await
        .map_or(0, |(o, _)| o);
    let (handover, listening) = match how {
        Start::Run => (None, None),
        Start::Receive { from, listening } => (Some(from), Some(listening)),
    };
    let task = Task {
        handover,
        listening,
        held: Vec::new(),
        backbone: backbone.clone(),
        host: host.clone(),
        record: record.clone(),
        every: manifest.checkpoint_every.filter(|_| manifest.migratable),
        pos: restore_from
            .as_ref()
            .filter(|_| manifest.migratable)
            .map_or(published, |c| c.stdout),
        published,
        checkpoint: restore_from,
        migratable: manifest.migratable,
    };
    let app = record.name.clone();
    let incarnation = record.incarnation;
    let task = tokio::spawn(async move {
        task.run(child, control, orders).await;
        let _ = finished.send((app, incarnation));
    });
    Ok(Local {
        incarnation: record.incarnation,
        memory: manifest.memory,
        pid,
        orders: orders_tx,
        task,
    })
}

/// Copies the app's seed files into its fresh volumes.
async fn seed(
    backbone: &Backbone,
    record: &AppRecord,
    volumes: &[(PathBuf, String)],
) -> Result<(), String> {
    for s in &record.seeds {
        let Some((dir, _)) = volumes.iter().find(|(_, g)| *g == s.volume) else {
            continue;
        };
        let rel = Path::new(&s.path);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("seed file {} leaves its volume", s.path));
        }
        let bytes = backbone
            .module(&s.digest)
            .await
            .map_err(|e| e.to_string())?;
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        tokio::fs::write(&target, bytes)
            .await
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    Ok(())
}

/// Writes an instance's status.
async fn report(
    backbone: &Backbone,
    host: &Host,
    record: &AppRecord,
    state: InstanceState,
    checkpoint: Option<CheckpointRef>,
    note: &str,
) {
    let status = InstanceStatus {
        app: record.name.clone(),
        node: host.node.clone(),
        incarnation: record.incarnation,
        state,
        restarts: record.restarts,
        checkpoint,
        note: note.to_owned(),
        updated_ms: now_ms(),
    };
    if let Err(e) = backbone.put_status(&status).await {
        tracing::warn!(app = %record.name, error = %e, "status");
    }
    // What happened, for whoever listens on the app's events.
    if !note.is_empty() {
        let _ = backbone
            .client
            .publish(
                format!("tern.events.{}", record.name),
                note.to_owned().into(),
            )
            .await;
    }
}

/// One running instance, from its start to its end.
struct Task {
    /// For a migration's destination: the incarnation whose output must all be
    /// published before this one's (the source's), and this one's output held
    /// meanwhile.
    handover: Option<u64>,
    held: Vec<u8>,
    /// Where a migration's destination listens, once it does.
    listening: Option<oneshot::Sender<Result<String, String>>>,
    backbone: Backbone,
    host: Host,
    record: AppRecord,
    every: Option<Duration>,
    /// Offset in the app's stdout of the next byte the guest writes.
    pos: u64,
    /// Bytes of the app's stdout the stream holds already: those are not published
    /// again when a restored guest writes them once more.
    published: u64,
    checkpoint: Option<CheckpointRef>,
    migratable: bool,
}

impl Task {
    async fn run(
        mut self,
        mut child: tokio::process::Child,
        control: tokio::net::UnixListener,
        mut orders: mpsc::UnboundedReceiver<Order>,
    ) {
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            return;
        };
        // No note of its own while it runs: `tern ps` shows why it was placed here. A
        // migration's destination reports once the source has handed over.
        let checkpoint = self.checkpoint.clone();
        let handing_over = tokio::time::Instant::now();
        // One clock for the whole wait: output arriving more often than it ticks must
        // not keep restarting it.
        let mut handover_tick = tokio::time::interval(Duration::from_millis(100));
        let mut moving: Option<(String, oneshot::Sender<Result<Moved, String>>)> = None;
        let accepted = tokio::select! {
            a = tokio::time::timeout(Duration::from_secs(60), control.accept()) => a.ok().and_then(Result::ok),
            _ = child.wait() => None,
        };
        let (mut control_out, mut lines) = match accepted {
            Some((stream, _)) => {
                let (r, w) = stream.into_split();
                (Some(w), Some(tokio::io::BufReader::new(r).lines()))
            }
            None => (None, None),
        };
        let mut ended: Option<Ended> = None;
        let mut out_buf = vec![0u8; 64 << 10];
        let mut err_buf = vec![0u8; 64 << 10];
        let (mut out_open, mut err_open) = (true, true);
        let mut ticker = self.every.map(|d| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut last_checkpoint = checkpoint;
        let mut killed = false;
        let status = loop {
            tokio::select! {
                n = stdout.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => self.stdout(&out_buf[..n]).await,
                },
                n = stderr.read(&mut err_buf), if err_open => match n {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => self.stderr(&err_buf[..n]).await,
                },
                line = next_line(&mut lines) => match line {
                    Some(line) => match serde_json::from_str::<Event>(&line) {
                        Ok(Event::Checkpoint { path, .. }) => {
                            // The guest is stopped: every byte it wrote is in the pipe.
                            self.drain(&mut stdout, &mut out_buf).await;
                            // Its offset in the app's output is known once the source
                            // of its migration has handed over.
                            while self.handover.is_some() {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                self.hand_over(handing_over.elapsed(), last_checkpoint.clone()).await;
                            }
                            match self.store(&path).await {
                                Ok(c) => {
                                    if let Some(old) = last_checkpoint.replace(c.clone())
                                        && old.digest != c.digest
                                        && self.record.restore.as_ref().is_none_or(|r| r.digest != old.digest)
                                    {
                                        self.backbone.drop_snapshot(&old.digest).await;
                                    }
                                    self.status(InstanceState::Running, Some(c), "").await;
                                }
                                Err(e) => tracing::warn!(app = %self.record.name, error = %e, "checkpoint not stored"),
                            }
                            send(&mut control_out, Command::Ack).await;
                        }
                        Ok(Event::CheckpointFailed { reason }) => {
                            tracing::warn!(app = %self.record.name, %reason, "checkpoint failed");
                        }
                        Ok(Event::Started) => {
                            if self.handover.is_none() {
                                self.status(InstanceState::Running, last_checkpoint.clone(), "").await;
                            }
                        }
                        Ok(Event::Listening { addr }) => {
                            if let Some(l) = self.listening.take() {
                                let _ = l.send(Ok(addr));
                            }
                        }
                        Ok(Event::Migrated { downtime_ms, total_ms, rounds, bytes }) => {
                            if let Some((_, reply)) = moving.take() {
                                let _ = reply.send(Ok(Moved { downtime_ms, total_ms, rounds, bytes }));
                            }
                        }
                        Ok(Event::MigrationFailed { reason }) => {
                            if let Some((to, reply)) = moving.take() {
                                let note = format!("its migration to {to} failed: {reason}; it runs on here");
                                self.status(InstanceState::Running, last_checkpoint.clone(), &note).await;
                                let _ = reply.send(Err(reason));
                            }
                        }
                        Ok(Event::Ended(e)) => ended = Some(e),
                        Err(e) => tracing::warn!(app = %self.record.name, error = %e, "instance said {line:?}"),
                    },
                    None => lines = None,
                },
                // No checkpoint while a move is under way, nor before a migration's
                // destination knows where its output starts.
                _ = tick(&mut ticker), if moving.is_none() && self.handover.is_none() => {
                    send(&mut control_out, Command::Checkpoint).await;
                }
                _ = handover_tick.tick(), if self.handover.is_some() => {
                    self.hand_over(handing_over.elapsed(), last_checkpoint.clone()).await;
                }
                order = orders.recv() => match order {
                    Some(Order::Stop) if self.migratable && control_out.is_some() => {
                        send(&mut control_out, Command::Stop).await;
                    }
                    Some(Order::Migrate { addr, to, reply }) => {
                        if !self.migratable || control_out.is_none() || moving.is_some() {
                            let _ = reply.send(Err(format!("{} cannot be migrated now", self.record.name)));
                        } else {
                            self.status(InstanceState::Migrating { to: to.clone() }, last_checkpoint.clone(), "").await;
                            send(&mut control_out, Command::Migrate { to: addr }).await;
                            moving = Some((to, reply));
                        }
                    }
                    Some(_) | None => {
                        killed = true;
                        let _ = child.start_kill();
                    }
                },
                status = child.wait() => break status,
            }
        };
        // Its last lines may still be in the socket when the process is seen to end.
        while ended.is_none() && lines.is_some() {
            match tokio::time::timeout(Duration::from_secs(2), next_line(&mut lines)).await {
                Ok(Some(line)) => match serde_json::from_str::<Event>(&line) {
                    Ok(Event::Ended(e)) => ended = Some(e),
                    Ok(Event::Migrated {
                        downtime_ms,
                        total_ms,
                        rounds,
                        bytes,
                    }) => {
                        if let Some((_, reply)) = moving.take() {
                            let _ = reply.send(Ok(Moved {
                                downtime_ms,
                                total_ms,
                                rounds,
                                bytes,
                            }));
                        }
                    }
                    _ => {}
                },
                _ => break,
            }
        }
        if let Some(l) = self.listening.take() {
            let _ = l.send(Err(match &ended {
                Some(Ended::Failed { reason }) => reason.clone(),
                _ => "the receiving instance ended".to_owned(),
            }));
        }
        // The rest of its output, then the mark that this incarnation has no more.
        while out_open {
            match stdout.read(&mut out_buf).await {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => self.stdout(&out_buf[..n]).await,
            }
        }
        while err_open {
            match stderr.read(&mut err_buf).await {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => self.stderr(&err_buf[..n]).await,
            }
        }
        if self.handover.is_some() {
            // A migration's destination that ends before the source handed over: it
            // has the app only if the source ends too (its migration went through).
            // Cancelled, or with no word from the source, it never had it, and says
            // nothing: the source still reports.
            if killed {
                return;
            }
            let waiting = tokio::time::Instant::now();
            while self.handover.is_some() && waiting.elapsed() < HANDOVER_WAIT {
                self.hand_over(Duration::ZERO, last_checkpoint.clone())
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.handover.is_some() {
                return;
            }
        }
        let _ = self
            .backbone
            .end_log(&self.record.name, self.record.incarnation)
            .await;
        if killed || ended == Some(Ended::Migrated) {
            // Removed, placed elsewhere or moved: its new node reports now.
            return;
        }
        let (state, note) = match (ended, status) {
            (Some(Ended::Exited { code }), _) => (
                InstanceState::Exited { code },
                format!("exited with code {code}"),
            ),
            (Some(Ended::Failed { reason }), _) => (
                InstanceState::Failed {
                    reason: reason.clone(),
                },
                reason,
            ),
            (Some(Ended::Migrated), _) => return,
            (Some(Ended::Stopped), _) => (
                InstanceState::Placed,
                "stopped with its node; resumes from its checkpoint".to_owned(),
            ),
            (None, status) => {
                let reason = match status {
                    Ok(s) => format!("its process ended ({s})"),
                    Err(e) => format!("its process was lost: {e}"),
                };
                (
                    InstanceState::Failed {
                        reason: reason.clone(),
                    },
                    reason,
                )
            }
        };
        self.status(state, last_checkpoint, &note).await;
    }

    async fn status(&self, state: InstanceState, checkpoint: Option<CheckpointRef>, note: &str) {
        report(
            &self.backbone,
            &self.host,
            &self.record,
            state,
            checkpoint,
            note,
        )
        .await;
    }

    /// A migration's destination: once the source's output is all published (or
    /// after [`HANDOVER_WAIT`]), this one's goes on from where it ended.
    async fn hand_over(&mut self, waited: Duration, checkpoint: Option<CheckpointRef>) {
        let Some(from) = self.handover else { return };
        let (offset, end) = self
            .backbone
            .last_output(&self.record.name)
            .await
            .unwrap_or((self.published, None));
        if end.is_none_or(|e| e < from) && waited < HANDOVER_WAIT {
            return;
        }
        self.handover = None;
        self.published = offset;
        self.pos = offset;
        let held = std::mem::take(&mut self.held);
        self.status(InstanceState::Running, checkpoint, "").await;
        if !held.is_empty() {
            self.stdout(&held).await;
        }
    }

    /// Publishes what the stream does not hold yet of these stdout bytes.
    async fn stdout(&mut self, bytes: &[u8]) {
        if self.handover.is_some() {
            self.held.extend_from_slice(bytes);
            return;
        }
        let start = self.pos;
        self.pos += bytes.len() as u64;
        if self.pos <= self.published {
            return;
        }
        let skip = self.published.saturating_sub(start) as usize;
        let offset = start + skip as u64;
        self.published = self.pos;
        if let Err(e) = self
            .backbone
            .publish_log(
                &self.record.name,
                self.record.incarnation,
                false,
                Some(offset),
                bytes[skip..].to_vec(),
            )
            .await
        {
            tracing::warn!(app = %self.record.name, error = %e, "output lost");
        }
    }

    async fn stderr(&self, bytes: &[u8]) {
        if let Err(e) = self
            .backbone
            .publish_log(
                &self.record.name,
                self.record.incarnation,
                true,
                None,
                bytes.to_vec(),
            )
            .await
        {
            tracing::warn!(app = %self.record.name, error = %e, "output lost");
        }
    }

    /// Reads and publishes every byte waiting in the stdout pipe.
    async fn drain(&mut self, stdout: &mut tokio::process::ChildStdout, buf: &mut [u8]) {
        loop {
            let waiting = rustix::io::ioctl_fionread(stdout.as_fd()).unwrap_or(0) as usize;
            if waiting == 0 {
                return;
            }
            let n = waiting.min(buf.len());
            match stdout.read_exact(&mut buf[..n]).await {
                Ok(_) => {
                    let chunk = buf[..n].to_vec();
                    self.stdout(&chunk).await;
                }
                Err(_) => return,
            }
        }
    }

    /// Stores the bundle at `path` and returns where it is.
    async fn store(&self, path: &Path) -> Result<CheckpointRef, BackboneError> {
        let (digest, size) = self.backbone.put_snapshot(path).await?;
        Ok(CheckpointRef {
            digest,
            at_ms: now_ms(),
            stdout: self.pos,
            size,
        })
    }
}

async fn next_line(
    lines: &mut Option<tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>>,
) -> Option<String> {
    match lines {
        Some(l) => l.next_line().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn send(control: &mut Option<tokio::net::unix::OwnedWriteHalf>, command: Command) {
    let Some(c) = control else { return };
    let Ok(mut line) = serde_json::to_vec(&command) else {
        return;
    };
    line.push(b'\n');
    if c.write_all(&line).await.is_err() {
        *control = None;
    }
}
