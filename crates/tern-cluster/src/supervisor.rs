//! A node's instances: the agent watches the deployments, starts each incarnation
//! placed on it in a `tern instance` process of its own, publishes its output, takes
//! its periodic checkpoints to the object store, reports its status, and stops it when
//! the app is removed or placed elsewhere.
//!
//! An instance's files live in `STATE/apps/APP/INCARNATION/`: the module, its volumes
//! (`volumes/N`), the spec and the last checkpoint bundle.

use std::collections::HashMap;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::apps::{AppEvent, AppRecord, CheckpointRef, InstanceStatus, now_ms};
use crate::backbone::{Backbone, BackboneError};
use crate::instance::{Command, Ended, Event, InstanceSpec};
use crate::manifest;
use crate::model::{InstanceState, NodeLoad};

/// What a node's supervisor needs to know of the node.
#[derive(Debug, Clone)]
pub struct Host {
    pub node: String,
    pub engine: tern_runtime::EngineKind,
    /// Where instances keep their files.
    pub state: PathBuf,
    /// The `tern` program, which runs each instance (`tern instance SPEC`).
    pub tern: PathBuf,
}

/// Orders for one instance's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// End it at once (the app was removed or placed elsewhere).
    Kill,
    /// Checkpoint it and end it (the node is stopping).
    Stop,
}

struct Local {
    incarnation: u64,
    memory: u64,
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
    let (finished_tx, mut finished) = mpsc::unbounded_channel::<(String, u64)>();
    let mut running: HashMap<String, Local> = HashMap::new();
    // The last incarnation of each app that ran here: never run twice.
    let mut ran: HashMap<String, u64> = HashMap::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = events.next() => match event {
                Some(Ok(AppEvent::Put(record, _))) => {
                    let app = record.name.clone();
                    if let Some(local) = running.get(&app)
                        && record.incarnation >= local.incarnation
                        && record.node.as_deref() != Some(host.node.as_str())
                    {
                        let _ = local.orders.send(Order::Kill);
                    }
                    let mine = record.node.as_deref() == Some(host.node.as_str());
                    let fresh = ran.get(&app).is_none_or(|&r| record.incarnation > r);
                    if mine && fresh && !running.contains_key(&app) {
                        ran.insert(app.clone(), record.incarnation);
                        match start(&host, &backbone, &record, finished_tx.clone()).await {
                            Ok(local) => { running.insert(app, local); }
                            Err(reason) => {
                                tracing::warn!(%app, %reason, "instance did not start");
                                report(&backbone, &host, &record, InstanceState::Failed { reason: reason.clone() }, None, &reason).await;
                            }
                        }
                    }
                }
                Some(Ok(AppEvent::Removed(app))) => {
                    if let Some(local) = running.get(&app) {
                        let _ = local.orders.send(Order::Kill);
                    }
                    ran.remove(&app);
                    let _ = tokio::fs::remove_dir_all(host.state.join("apps").join(&app)).await;
                }
                Some(Err(e)) => tracing::warn!(error = %e, "deployments"),
                None => return Err(crate::backbone::js_err("watch apps", "the watch ended")),
            },
            Some((app, incarnation)) = finished.recv() => {
                if running.get(&app).is_some_and(|l| l.incarnation == incarnation) {
                    running.remove(&app);
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

/// Lays out the instance's files and starts its process and task.
async fn start(
    host: &Host,
    backbone: &Backbone,
    record: &AppRecord,
    finished: mpsc::UnboundedSender<(String, u64)>,
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
    let status = backbone.status(&record.name).await.ok().flatten();
    let resumed = status
        .as_ref()
        .filter(|s| s.incarnation == record.incarnation)
        .and_then(|s| s.checkpoint.clone());
    let restore_from = resumed.or_else(|| record.restore.clone());
    let restore = match &restore_from {
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
    // SAFETY: the closure only makes one system call (prctl), which is safe between
    // fork and exec.
    unsafe {
        command.pre_exec(|| {
            // The instance dies with its agent, even one killed with SIGKILL.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start `{} instance`: {e}", host.tern.display()))?;
    let (orders_tx, orders) = mpsc::unbounded_channel();
    let published = backbone
        .last_output(&record.name)
        .await
        .map_or(0, |(o, _)| o);
    let task = Task {
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
}

/// One running instance, from its start to its end.
struct Task {
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
        // No note of its own while it runs: `tern ps` shows why it was placed here.
        let checkpoint = self.checkpoint.clone();
        self.status(InstanceState::Running, checkpoint.clone(), "")
            .await;
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
                        Ok(Event::Ended(e)) => ended = Some(e),
                        Err(e) => tracing::warn!(app = %self.record.name, error = %e, "instance said {line:?}"),
                    },
                    None => lines = None,
                },
                _ = tick(&mut ticker) => send(&mut control_out, Command::Checkpoint).await,
                order = orders.recv() => match order {
                    Some(Order::Stop) if self.migratable && control_out.is_some() => {
                        send(&mut control_out, Command::Stop).await;
                    }
                    Some(_) | None => {
                        killed = true;
                        let _ = child.start_kill();
                    }
                },
                status = child.wait() => break status,
            }
        };
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
        let _ = self
            .backbone
            .end_log(&self.record.name, self.record.incarnation)
            .await;
        if killed {
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

    /// Publishes what the stream does not hold yet of these stdout bytes.
    async fn stdout(&mut self, bytes: &[u8]) {
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
