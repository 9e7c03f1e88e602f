//! One running instance, from its start to its end: its output published, its
//! checkpoints stored, its moves and its status.

use std::os::fd::AsFd as _;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::commands::NotMoved;
use super::{Host, Order, report};
use crate::apps::{
    AppRecord, CheckpointRef, HANDOVER_LIMIT, HANDOVER_WAIT, LastOutput, LogId, Published, now_ms,
};
use crate::backbone::{Backbone, BackboneError};
use crate::instance::{Command, Ended, Event};
use crate::model::InstanceState;
use crate::protocol::Moved;

/// A migration under way: its destination node, and who waits for its end.
type Moving = (String, Vec<oneshot::Sender<Result<Moved, NotMoved>>>);

/// One running instance, from its start to its end.
pub(super) struct Task {
    /// For a migration's destination: the incarnation whose output must all be
    /// published before this one's (the source's), and this one's output held
    /// meanwhile.
    pub(super) handover: Option<u64>,
    pub(super) held: Vec<u8>,
    /// Where a migration's destination listens, once it does.
    pub(super) listening: Option<super::Listening>,
    /// The node's TLS listener in front of this destination's, while it waits.
    pub(super) inbound: Option<crate::tunnel::Inbound>,
    /// For a migration's destination: the source's node.
    pub(super) source: Option<String>,
    pub(super) backbone: Backbone,
    pub(super) host: Host,
    pub(super) record: AppRecord,
    pub(super) every: Option<Duration>,
    /// Offset in the app's stdout of the next byte the guest writes.
    pub(super) pos: u64,
    /// Bytes of the app's stdout the stream holds already: those are not published
    /// again when a restored guest writes them once more.
    pub(super) published: u64,
    pub(super) checkpoint: Option<CheckpointRef>,
    pub(super) migratable: bool,
    /// stderr chunks published so far: each one's name for the stream.
    pub(super) stderr_chunks: u64,
    /// The stream sequence of the last message on the app's stdout this writer knows
    /// of: its next chunk is stored only if that is still the last (the fence).
    pub(super) last_seq: u64,
    /// A later incarnation wrote the app's output: this one's is not published any
    /// more, and its instance is ended.
    pub(super) fenced: bool,
    /// Where in the app's stdout the guest resumes (its checkpoint's offset), when it
    /// resumes from a checkpoint; from the stream's end otherwise.
    pub(super) resume_at: Option<u64>,
    /// What `tern ps` shows of this instance while it runs (empty: the placement's
    /// note), such as that its node restarted and it resumed.
    pub(super) note: String,
}

impl Task {
    pub(super) async fn run(
        mut self,
        mut child: tokio::process::Child,
        control: tokio::net::UnixListener,
        mut orders: mpsc::UnboundedReceiver<Order>,
    ) {
        let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take())
        else {
            return;
        };
        // Starting: until the instance says it runs (its module compiled, the first
        // time on this node, or its checkpoint restored), `tern ps` says so. A
        // migration's destination reports once the guest runs there.
        let checkpoint = self.checkpoint.clone();
        // Where the app's output stands: read until the stream answers, so that an
        // instance started while the backbone is away does not publish it all again.
        if self.handover.is_none() {
            let last = self.read_last_output().await;
            self.published = last.offset;
            self.last_seq = last.seq;
            self.pos = self.resume_at.unwrap_or(last.offset);
        }
        // A migration's destination has the app only once its guest runs here (after
        // the migration committed); one that ends before never had it.
        let receiving = self.handover.is_some();
        let mut started = false;
        // Started from its start while the stream holds output of an earlier
        // incarnation: what it prints repeats that, and the stream says so.
        let from_start = self.checkpoint.is_none() || !self.migratable;
        if self.handover.is_none() && from_start && self.published > 0 {
            let text = format!(
                "{} started again from its start on {} (incarnation {}): what follows repeats its earlier output",
                self.record.name, self.host.node, self.record.incarnation
            );
            self.backbone
                .publish_note(&self.record.name, self.record.incarnation, &text)
                .await;
        }
        if self.handover.is_none() {
            let doing = if self.checkpoint.is_some() && self.migratable {
                "loading its module and restoring its checkpoint"
            } else {
                "loading its module"
            };
            let note = format!(
                "starting on {}: {doing} (a module is compiled the first time it runs on a node)",
                self.host.node
            );
            tracing::info!(app = %self.record.name, incarnation = self.record.incarnation, "{note}");
            self.status(InstanceState::Starting, checkpoint.clone(), &note)
                .await;
        }
        let handing_over = tokio::time::Instant::now();
        // One clock for the whole wait: output arriving more often than it ticks must
        // not keep restarting it.
        let mut handover_tick = tokio::time::interval(Duration::from_millis(100));
        // The instance stops itself while this agent is stopped; once the agent goes
        // on, it lets the instance go on only if the app is still this incarnation's
        // here (otherwise it ends it: the app runs elsewhere now).
        let mut paused_tick = tokio::time::interval(Duration::from_millis(250));
        paused_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pid = child.id();
        // The migration under way: its destination node, and who waits for its end (a
        // control plane that asks again after losing the answer waits too).
        let mut moving: Option<Moving> = None;
        // The connection first: an instance that ran to its end before this agent got
        // here (its first status held up by a slow backbone) has connected and said
        // everything, and its connection waits to be accepted.
        let accepted = tokio::select! {
            biased;
            a = tokio::time::timeout(Duration::from_secs(60), control.accept()) => a.ok().and_then(Result::ok),
            _ = child.wait() => tokio::time::timeout(Duration::from_millis(200), control.accept())
                .await
                .ok()
                .and_then(Result::ok),
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
        // The checkpoint before the last: kept one period more, since a restore elsewhere
        // (this node taken for lost while it still ran) may have been asked from it just
        // as this node stored the next one.
        let mut killed = false;
        let status = loop {
            tokio::select! {
                n = stdout.read(&mut out_buf), if out_open => match n {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => {
                        self.stdout(&out_buf[..n]).await;
                        // Fenced: a later incarnation runs the app; this copy ends.
                        if self.fenced && !killed {
                            killed = true;
                            let _ = child.start_kill();
                        }
                    }
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
                                    // The checkpoints it replaces are the control
                                    // plane's to delete: a node may not.
                                    last_checkpoint = Some(c.clone());
                                    self.status(InstanceState::Running, Some(c), &self.note.clone()).await;
                                }
                                Err(e) => tracing::warn!(app = %self.record.name, error = %e, "checkpoint not stored"),
                            }
                            send(&mut control_out, Command::Ack).await;
                        }
                        Ok(Event::CheckpointFailed { reason }) => {
                            tracing::warn!(app = %self.record.name, %reason, "checkpoint failed");
                        }
                        Ok(Event::Started) => {
                            started = true;
                            // Its migration is in: no other peer is let through.
                            self.inbound = None;
                            tracing::info!(app = %self.record.name, incarnation = self.record.incarnation, note = %self.note, "running");
                            if self.handover.is_some() && self.note.is_empty() {
                                // A migration's destination runs the guest once the
                                // source has confirmed: it has the app now, and its
                                // output follows the source's.
                                self.note = "took over from its migration's source".to_owned();
                            }
                            self.status(InstanceState::Running, last_checkpoint.clone(), &self.note.clone()).await;
                        }
                        Ok(Event::Listening { addr }) => {
                            if let Some(l) = self.listening.take() {
                                let _ = l.send(Some(self.listen_for(addr).await));
                            }
                        }
                        Ok(e @ (Event::Migrated { .. } | Event::MigrationFailed { .. })) => {
                            if let Some(note) = self.migration_over(&mut moving, e) {
                                self.note = note;
                                self.status(InstanceState::Running, last_checkpoint.clone(), &self.note.clone()).await;
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
                _ = paused_tick.tick(), if !killed => {
                    if let Some(pid) = pid.filter(|&p| crate::instance::process_stopped(p) == Some(true)) {
                        match self.backbone.app(&self.record.name).await {
                            Ok(Some((r, _)))
                                if r.incarnation == self.record.incarnation
                                    && r.node.as_deref() == Some(self.host.node.as_str()) =>
                            {
                                tracing::info!(app = %self.record.name, "this node went on: its instance goes on");
                                if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                                    let _ = rustix::process::kill_process(p, rustix::process::Signal::CONT);
                                }
                            }
                            Ok(_) => {
                                tracing::warn!(app = %self.record.name, "placed elsewhere while this node was stopped: its copy here ends");
                                killed = true;
                                let _ = child.start_kill();
                            }
                            // Unknown yet: it stays stopped until the backbone answers.
                            Err(_) => {}
                        }
                    }
                }
                // Only once the guest runs here: a migration that never commits (its
                // source's guest ended first) leaves the app to its source, whose
                // output has ended too.
                _ = handover_tick.tick(), if self.handover.is_some() && started => {
                    self.hand_over(handing_over.elapsed(), last_checkpoint.clone()).await;
                    // Taken over: a checkpoint of its own at once, so that the newest
                    // state is stored should this node die before the next tick.
                    if self.handover.is_none() && self.every.is_some() {
                        send(&mut control_out, Command::Checkpoint).await;
                    }
                }
                order = orders.recv() => match order {
                    Some(Order::Stop) if self.migratable && control_out.is_some() => {
                        send(&mut control_out, Command::Stop).await;
                    }
                    Some(Order::Migrate { addr, to, reply }) => {
                        if let Some((under_way, waiting)) = moving.as_mut().filter(|(t, _)| *t == to) {
                            // Asked again (the asker lost its answer): it waits for the
                            // same end.
                            let _ = under_way;
                            waiting.push(reply);
                        } else if !self.migratable || control_out.is_none() || moving.is_some() {
                            let _ = reply.send(Err(NotMoved::refused(format!("{} cannot be migrated now", self.record.name))));
                        } else {
                            self.status(InstanceState::Migrating { to: to.clone() }, last_checkpoint.clone(), &self.note.clone()).await;
                            send(&mut control_out, Command::Migrate { to: addr }).await;
                            moving = Some((to, vec![reply]));
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
                    // A migration that ended with the guest: whoever waits is told how,
                    // not that the instance went away.
                    Ok(e @ (Event::Migrated { .. } | Event::MigrationFailed { .. })) => {
                        self.migration_over(&mut moving, e);
                    }
                    _ => {}
                },
                _ => break,
            }
        }
        if let Some(l) = self.listening.take() {
            let _ = l.send(Some(Err(match &ended {
                Some(Ended::Failed { reason }) => reason.clone(),
                _ => "the receiving instance ended".to_owned(),
            })));
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
        if receiving && !started {
            // Its migration never committed (cancelled, failed, or the source's guest
            // ended first): it never had the app, and says nothing; the source reports.
            return;
        }
        if self.handover.is_some() {
            // A migration's destination that ran the guest and ends before the source
            // handed its output over: its own output follows the source's.
            if killed {
                return;
            }
            let waiting = tokio::time::Instant::now();
            while self.handover.is_some() && waiting.elapsed() < HANDOVER_LIMIT {
                self.hand_over(handing_over.elapsed(), last_checkpoint.clone())
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.handover.is_some() {
                return;
            }
        }
        self.end_output().await;
        if killed || self.fenced || ended == Some(Ended::Migrated) {
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
        tracing::info!(app = %self.record.name, incarnation = self.record.incarnation, state = state.name(), "{note}");
        self.status(state, last_checkpoint, &note).await;
    }

    /// Where the source of this destination's migration connects: the node's TLS
    /// listener, which lets the source's node alone through to the instance at `addr`;
    /// or, for a node without a certificate, the instance itself.
    async fn listen_for(&mut self, addr: String) -> Result<String, String> {
        let (Some(tls), Some(source)) = (&self.host.tls, &self.source) else {
            return Ok(addr);
        };
        let inbound = crate::tunnel::Inbound::start(
            tls,
            &self.host.link_host,
            source,
            addr,
            &self.record.name,
        )
        .await
        .map_err(|e| {
            format!(
                "cannot listen for the migration on {}: {e}",
                self.host.link_host
            )
        })?;
        let addr = inbound.addr.clone();
        self.inbound = Some(inbound);
        Ok(addr)
    }

    /// The migration under way has ended, as the instance reports it (`Migrated` or
    /// `MigrationFailed`): whoever waits is told what it measured or why it failed.
    /// Returns the note for the app's status when it failed.
    fn migration_over(&self, moving: &mut Option<Moving>, event: Event) -> Option<String> {
        let (to, waiting) = moving.take()?;
        let (result, note) = match event {
            Event::Migrated {
                downtime_ms,
                total_ms,
                rounds,
                bytes,
                precopy,
            } => {
                let stats = Moved {
                    downtime_ms,
                    total_ms,
                    rounds,
                    bytes,
                    precopy,
                };
                tracing::info!(app = %self.record.name, incarnation = self.record.incarnation, downtime_ms, rounds, bytes, "migrated away");
                super::remember(
                    &self.host.migrated,
                    &self.record.name,
                    self.record.incarnation,
                    &stats,
                );
                (Ok(stats), None)
            }
            Event::MigrationFailed { reason, ended } => {
                let note = if ended {
                    format!("its migration to {to} did not finish: {reason}")
                } else {
                    format!("its migration to {to} failed: {reason}; it runs on here")
                };
                tracing::warn!(app = %self.record.name, "{note}");
                (Err(NotMoved { reason, ended }), Some(note))
            }
            _ => {
                *moving = Some((to, waiting));
                return None;
            }
        };
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
        note
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
        // Unreadable: not known yet, whatever the wait.
        let Ok(last) = self.backbone.last_output(&self.record.name).await else {
            return;
        };
        if last.end.is_none_or(|e| e < from) {
            if waited < HANDOVER_WAIT {
                return;
            }
            // Past the short wait, only for a source whose node is still there: it is
            // slow, not dead, and its last output is still to come.
            if waited < HANDOVER_LIMIT && self.source_alive().await {
                return;
            }
            tracing::warn!(
                app = %self.record.name,
                waited_s = waited.as_secs(),
                "the previous incarnation's output never ended; this one's goes on after what it published"
            );
        }
        self.handover = None;
        self.published = last.offset;
        self.pos = last.offset;
        self.last_seq = last.seq;
        let held = std::mem::take(&mut self.held);
        self.status(InstanceState::Running, checkpoint, &self.note.clone())
            .await;
        if !held.is_empty() {
            self.stdout(&held).await;
        }
    }

    /// Whether the node of this migration's source is in the registry (or cannot be
    /// read now: a backbone that does not answer is no sign the source died).
    async fn source_alive(&self) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        !matches!(self.backbone.node(source).await, Ok(None))
    }

    /// Publishes what the stream does not hold yet of these stdout bytes.
    async fn stdout(&mut self, bytes: &[u8]) {
        if self.handover.is_some() {
            self.held.extend_from_slice(bytes);
            return;
        }
        let start = self.pos;
        self.pos += bytes.len() as u64;
        while !self.fenced && self.pos > self.published {
            let skip = self.published.saturating_sub(start) as usize;
            let offset = start + skip as u64;
            let stored = self
                .backbone
                .publish_log(
                    &self.record.name,
                    self.record.incarnation,
                    LogId::Out(offset),
                    Some(offset),
                    Some(self.last_seq),
                    bytes[skip..].to_vec(),
                )
                .await;
            match stored {
                Published::Stored(seq) => {
                    self.last_seq = seq;
                    self.published = self.pos;
                }
                Published::Conflict => self.someone_wrote().await,
            }
        }
    }

    /// The app's stdout has a message this writer did not expect. Written by a later
    /// incarnation: this one's app runs elsewhere, so it is fenced. Written by an
    /// earlier one (a copy that ran on while its node was cut off): what it stored is
    /// skipped, and this writer goes on after it.
    async fn someone_wrote(&mut self) {
        let last = self.read_last_output().await;
        if last.incarnation > self.record.incarnation {
            tracing::warn!(
                app = %self.record.name,
                incarnation = self.record.incarnation,
                later = last.incarnation,
                "a later incarnation writes this app's output: this copy stops"
            );
            self.fenced = true;
            return;
        }
        self.last_seq = last.seq;
        self.published = self.published.max(last.offset);
    }

    /// Says that this incarnation's output is all out, fenced as its output is.
    async fn end_output(&mut self) {
        while !self.fenced {
            match self
                .backbone
                .end_log(&self.record.name, self.record.incarnation, self.last_seq)
                .await
            {
                Published::Stored(seq) => {
                    self.last_seq = seq;
                    return;
                }
                Published::Conflict => self.someone_wrote().await,
            }
        }
    }

    /// Where the app's stdout stands, read again until the stream answers.
    async fn read_last_output(&self) -> LastOutput {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.backbone.last_output(&self.record.name).await {
                Ok(last) => return last,
                Err(e) => {
                    tracing::warn!(app = %self.record.name, error = %e, "output: cannot read where it stands yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn stderr(&mut self, bytes: &[u8]) {
        self.stderr_chunks += 1;
        self.backbone
            .publish_log(
                &self.record.name,
                self.record.incarnation,
                LogId::Err(self.stderr_chunks),
                None,
                None,
                bytes.to_vec(),
            )
            .await;
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
