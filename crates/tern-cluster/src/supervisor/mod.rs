//! A node's instances: the agent watches the deployments, starts each incarnation
//! placed on it in a `tern instance` process of its own, publishes its output, takes
//! its periodic checkpoints to the object store, reports its status, and stops it when
//! the app is removed or placed elsewhere.
//!
//! An instance's files live in `STATE/apps/APP/INCARNATION/`: the module, its volumes
//! (`volumes/N`), the spec and the last checkpoint bundle.
//!
//! The control plane asks a node for what a watch cannot say, as requests on
//! `tern.node.NAME.cmd` ([`crate::protocol::NodeCommand`]): to receive an app's live migration, to send
//! one, to give up one that failed, and to read an app's volume files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use crate::apps::{AppEvent, AppRecord, CheckpointRef, InstanceStatus, now_ms};
use crate::backbone::Backbone;
use crate::instance::InstanceSpec;
use crate::manifest;
use crate::model::{InstanceState, NodeLoad};
use crate::protocol::{Moved, app_events_subject, command_subject};

mod commands;
mod task;

use commands::command;
use task::Task;

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
    /// The live migrations that went through from this node, by app and incarnation:
    /// a control plane that asks again for one (it lost the answer) is told what it
    /// measured, not that the app is gone.
    pub migrated: Migrated,
    /// The node's TLS identity for migration streams: with it, every stream goes over
    /// mutually authenticated TLS between the two nodes the move names
    /// ([`crate::tunnel`]); without it, the node migrates on loopback only.
    pub tls: Option<tern_trust::tls::NodeTls>,
}

impl Host {
    /// Why this node cannot send or take a migration now, if it cannot: one without a
    /// certificate does so only on loopback, never in clear across a network.
    pub(crate) fn migration_refused(&self) -> Option<String> {
        let loopback = crate::link::is_loopback_host(&self.link_host);
        (self.tls.is_none() && !loopback).then(|| {
            format!(
                "node {} has no certificate (--cert), so it migrates only on loopback, never in clear across a network",
                self.node
            )
        })
    }
}

/// See [`Host::migrated`].
pub type Migrated = Arc<Mutex<HashMap<(String, u64), Moved>>>;

/// Migrations a node remembers.
const REMEMBERED: usize = 256;

/// Remembers that incarnation `incarnation` of `app` migrated away with `stats`.
fn remember(migrated: &Migrated, app: &str, incarnation: u64, stats: &Moved) {
    if let Ok(mut m) = migrated.lock() {
        if m.len() >= REMEMBERED
            && let Some(k) = m.keys().next().cloned()
        {
            m.remove(&k);
        }
        m.insert((app.to_owned(), incarnation), stats.clone());
    }
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
        reply: oneshot::Sender<Result<Moved, commands::NotMoved>>,
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
        source: String,
        listening: Listening,
    },
}

/// Where a migration's destination listens, once it does (or why it never will): a
/// watch, so that a control plane asking again gets the same answer.
pub(super) type Listening = tokio::sync::watch::Sender<Option<Result<String, String>>>;

struct Local {
    incarnation: u64,
    memory: u64,
    /// The instance's process, once it runs (0 before).
    pid: Arc<AtomicU32>,
    orders: mpsc::UnboundedSender<Order>,
    task: tokio::task::JoinHandle<()>,
    /// For a migration's destination: where it listens, once it does.
    listening: Option<tokio::sync::watch::Receiver<Option<Result<String, String>>>>,
}

/// Runs `host`'s instances until `stop` completes; then checkpoints and stops the
/// migratable ones (so that they resume from there) and ends the others. `load` is
/// kept up to date for the heartbeats.
///
/// Nothing the backbone does ends it or an instance: the deployments' watch is opened
/// again whenever it fails, and the commands' subscription is made again until it is.
pub async fn supervise(
    host: Host,
    backbone: Backbone,
    load: Arc<Mutex<NodeLoad>>,
    stop: impl std::future::Future<Output = ()>,
) {
    let watching = backbone.clone();
    let mut events = Box::pin(crate::backbone::rewatch("deployments", move || {
        let b = watching.clone();
        async move { b.watch_apps().await }
    }));
    let mut commands = loop {
        match backbone.client.subscribe(command_subject(&host.node)).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "node commands: subscribing again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
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
                let (cpu, used) = usage.sample(running.values().map(|l| l.pid.load(Ordering::Relaxed)).filter(|&p| p != 0));
                if let Ok(mut l) = load.lock() {
                    l.cpu = cpu;
                    l.used = used;
                }
            }
            event = events.next() => match event {
                Some(AppEvent::Put(record, _)) => {
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
                Some(AppEvent::Removed(app)) => {
                    if let Some(local) = running.get(&app) {
                        let _ = local.orders.send(Order::Kill);
                    }
                    latest.remove(&app);
                    ran.remove(&app);
                    let _ = tokio::fs::remove_dir_all(host.state.join("apps").join(&app)).await;
                }
                None => break,
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
    // An incarnation that ended here already (this node restarted after it exited or
    // failed) is not run again.
    if let Ok(Some(st)) = backbone.status(app).await
        && st.incarnation == record.incarnation
        && matches!(
            st.state,
            InstanceState::Exited { .. } | InstanceState::Failed { .. }
        )
    {
        return;
    }
    match start(host, backbone, record, finished.clone(), Start::Run) {
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

/// Starts `record`'s instance: its files are laid out and its process started on a
/// task of its own, since fetching a module and a checkpoint can take long while the
/// backbone is slow, and the node's commands and watch must not wait behind it.
///
/// A start that fails for a reason that may pass (the backbone did not answer) is tried
/// again, with pauses of up to 10 s, until it works or the instance is no longer wanted
/// here: a stall of the backbone delays an app, it never fails it. One that cannot work
/// (no such module, a manifest that does not parse) fails the app; a migration's
/// destination gives up at once instead, and the control plane keeps the app where it
/// runs. Orders that come meanwhile wait for the instance, but `Kill` and `Stop`, which
/// end the start where it stands.
fn start(
    host: &Host,
    backbone: &Backbone,
    record: &AppRecord,
    finished: mpsc::UnboundedSender<(String, u64)>,
    how: Start,
) -> Result<Local, String> {
    let manifest = manifest::parse(&record.manifest).map_err(|e| format!("manifest: {e}"))?;
    let (orders_tx, mut orders) = mpsc::unbounded_channel();
    let pid = Arc::new(AtomicU32::new(0));
    let listening_rx = match &how {
        Start::Run => None,
        Start::Receive { listening, .. } => Some(listening.subscribe()),
    };
    let (memory, incarnation) = (manifest.memory, record.incarnation);
    // Weak: the channel still closes when the supervisor lets the instance go.
    let again = orders_tx.downgrade();
    let (host, backbone, record, started) =
        (host.clone(), backbone.clone(), record.clone(), pid.clone());
    let task = tokio::spawn(async move {
        let receiving = matches!(how, Start::Receive { .. });
        let mut held = Vec::new();
        let prepared = {
            let preparing = prepare_until_ready(&host, &backbone, &record, &manifest, receiving);
            tokio::pin!(preparing);
            loop {
                tokio::select! {
                    p = &mut preparing => break Some(p),
                    order = orders.recv() => match order {
                        Some(Order::Kill | Order::Stop) | None => break None,
                        Some(order) => held.push(order),
                    },
                }
            }
        };
        match (prepared, how) {
            (Some(Ok(p)), how) => {
                if let Some(id) = p.child.id() {
                    started.store(id, Ordering::Relaxed);
                }
                if let Some(tx) = again.upgrade() {
                    for order in held {
                        let _ = tx.send(order);
                    }
                }
                let (handover, listening, source) = match how {
                    Start::Run => (None, None, None),
                    Start::Receive {
                        from,
                        source,
                        listening,
                    } => (Some(from), Some(listening), Some(source)),
                };
                let task = Task {
                    handover,
                    listening,
                    inbound: None,
                    source,
                    held: Vec::new(),
                    backbone,
                    host,
                    every: manifest.checkpoint_every.filter(|_| manifest.migratable),
                    pos: 0,
                    published: 0,
                    last_seq: 0,
                    fenced: false,
                    resume_at: p
                        .restore_from
                        .as_ref()
                        .filter(|_| manifest.migratable)
                        .map(|c| c.stdout),
                    checkpoint: p.restore_from,
                    migratable: manifest.migratable,
                    stderr_chunks: 0,
                    note: p.note,
                    record: p.record,
                };
                task.run(p.child, p.control, orders).await;
            }
            (Some(Err(reason)), Start::Receive { listening, .. }) => {
                tracing::warn!(app = %record.name, %reason, "cannot receive the app");
                let _ = listening.send(Some(Err(reason)));
            }
            (Some(Err(reason)), Start::Run) => {
                tracing::warn!(app = %record.name, %reason, "instance did not start");
                let failed = InstanceState::Failed {
                    reason: reason.clone(),
                };
                report(&backbone, &host, &record, failed, None, &reason).await;
            }
            // No longer wanted here, or the node stops: the next start does it all.
            (None, _) => {}
        }
        let _ = finished.send((record.name, record.incarnation));
    });
    Ok(Local {
        incarnation,
        memory,
        pid,
        orders: orders_tx,
        task,
        listening: listening_rx,
    })
}

/// An instance ready to run: its process started, its control socket listening.
struct Prepared {
    child: tokio::process::Child,
    control: tokio::net::UnixListener,
    /// The record it runs, its restarts counted.
    record: AppRecord,
    /// The checkpoint it resumes from.
    restore_from: Option<CheckpointRef>,
    /// What `tern ps` shows of it while it runs.
    note: String,
}

/// Why an instance did not start, and whether trying again cannot help.
struct NotStarted {
    reason: String,
    lasting: bool,
}

impl NotStarted {
    fn lasting(reason: impl Into<String>) -> Self {
        NotStarted {
            reason: reason.into(),
            lasting: true,
        }
    }
}

impl From<crate::backbone::BackboneError> for NotStarted {
    fn from(e: crate::backbone::BackboneError) -> Self {
        NotStarted {
            lasting: e.is_lasting(),
            reason: e.to_string(),
        }
    }
}

/// [`prepare`], tried again while it fails for a reason that may pass (not for a
/// migration's destination, which gives up at once); the first such failure is shown
/// in the app's status.
async fn prepare_until_ready(
    host: &Host,
    backbone: &Backbone,
    record: &AppRecord,
    manifest: &manifest::Manifest,
    receiving: bool,
) -> Result<Prepared, String> {
    let mut wait = Duration::from_millis(500);
    let mut told = false;
    loop {
        match prepare(host, backbone, record, manifest, receiving).await {
            Ok(p) => return Ok(p),
            Err(e) if e.lasting || receiving => return Err(e.reason),
            Err(e) => {
                tracing::warn!(app = %record.name, reason = %e.reason, "instance not started yet; trying again");
                if !told {
                    let note = format!("not started yet: {}; trying again", e.reason);
                    report(backbone, host, record, InstanceState::Starting, None, &note).await;
                    told = true;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Lays out the instance's files and starts its process.
async fn prepare(
    host: &Host,
    backbone: &Backbone,
    record: &AppRecord,
    manifest: &manifest::Manifest,
    receiving: bool,
) -> Result<Prepared, NotStarted> {
    let dir = host
        .state
        .join("apps")
        .join(&record.name)
        .join(record.incarnation.to_string());
    let _ = tokio::fs::remove_dir_all(&dir).await;
    let err = |e: std::io::Error| NotStarted::lasting(format!("{}: {e}", dir.display()));
    tokio::fs::create_dir_all(&dir).await.map_err(err)?;
    let wasm = backbone.module(&record.module).await?;
    // Before any of it runs: signed as its manifest requires, and not altered since.
    tern_trust::check_module(&wasm, record.signatures.as_ref(), &manifest.signed_by)
        .map_err(|e| NotStarted::lasting(format!("module refused: {e}")))?;
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
    let status = backbone.status(&record.name).await.ok().flatten();
    let restore_from = record.resume_point(status.as_ref()).filter(|_| !receiving);
    // This very incarnation ran here before: this node was restarted (or the whole
    // continuum), and the app starts again here. It counts as a restart, and says so.
    let again = status
        .as_ref()
        .filter(|s| s.incarnation == record.incarnation && s.node == host.node && !receiving);
    let (restarts, note) = match (again, &restore_from) {
        (None, _) => (record.restarts, String::new()),
        (Some(s), Some(c)) if manifest.migratable => (
            s.restarts + 1,
            format!(
                "node {} restarted; resumed from its checkpoint of {:.1} s before (the progress since then is redone)",
                host.node,
                now_ms().saturating_sub(c.at_ms) as f64 / 1e3
            ),
        ),
        (Some(s), _) => (
            s.restarts + 1,
            format!(
                "node {} restarted; started again from its start ({})",
                host.node,
                if manifest.migratable {
                    "it had no checkpoint yet"
                } else {
                    "it is not migratable"
                }
            ),
        ),
    };
    let record = AppRecord {
        restarts,
        ..record.clone()
    };
    let restore = match &restore_from {
        _ if receiving => None,
        Some(c) if manifest.migratable => {
            let bytes = backbone.snapshot(&c.digest).await?;
            let path = dir.join("restore.tar");
            tokio::fs::write(&path, bytes).await.map_err(err)?;
            Some(path)
        }
        _ => {
            seed(backbone, &record, &volumes).await?;
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
        // Behind the node's TLS listener, the instance listens on loopback alone.
        receive: receiving.then(|| match host.tls {
            Some(_) => "127.0.0.1:0".to_owned(),
            None => format!("{}:0", host.link_host),
        }),
        checkpoint: dir.join("checkpoint.tar"),
        control: control_path,
        cache: Some(host.state.join("cache")),
    };
    let spec_path = dir.join("spec.json");
    let json = serde_json::to_vec_pretty(&spec).map_err(|e| NotStarted::lasting(e.to_string()))?;
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
    let child = command.spawn().map_err(|e| {
        NotStarted::lasting(format!(
            "cannot start `{} instance`: {e}",
            host.tern.display()
        ))
    })?;
    Ok(Prepared {
        child,
        control,
        record,
        restore_from,
        note,
    })
}

/// Copies the app's seed files into its fresh volumes.
async fn seed(
    backbone: &Backbone,
    record: &AppRecord,
    volumes: &[(PathBuf, String)],
) -> Result<(), NotStarted> {
    for s in &record.seeds {
        let Some((dir, _)) = volumes.iter().find(|(_, g)| *g == s.volume) else {
            continue;
        };
        let rel = Path::new(&s.path);
        if rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(NotStarted::lasting(format!(
                "seed file {} leaves its volume",
                s.path
            )));
        }
        let bytes = backbone.module(&s.digest).await?;
        let target = dir.join(rel);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| NotStarted::lasting(format!("{}: {e}", parent.display())))?;
        }
        tokio::fs::write(&target, bytes)
            .await
            .map_err(|e| NotStarted::lasting(format!("{}: {e}", target.display())))?;
    }
    Ok(())
}

/// Attempts at storing a status: with pauses of at most 2 s, over a minute.
const STATUS_TRIES: u32 = 40;

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
    // Tried again until the backbone holds it (a status lost in a stall would leave
    // `tern ps` wrong for good), for up to STATUS_TRIES attempts.
    let mut wait = Duration::from_millis(100);
    for attempt in 1..=STATUS_TRIES {
        match backbone.put_status(&status).await {
            Ok(()) => break,
            Err(e) if attempt == STATUS_TRIES => {
                tracing::warn!(app = %record.name, error = %e, "status not stored; giving up");
            }
            Err(e) => {
                if attempt == 1 {
                    tracing::warn!(app = %record.name, error = %e, "status not stored yet; trying again");
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
    // What happened, for whoever listens on the app's events.
    if !note.is_empty() {
        let _ = backbone
            .client
            .publish(app_events_subject(&record.name), note.to_owned().into())
            .await;
    }
}
