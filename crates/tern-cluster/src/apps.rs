//! Deployments as the backbone keeps them: what was asked for and where it should run
//! (`tern-apps`, written by the control plane), what each instance is doing
//! (`tern-status`, written by the node that runs it), its output (the `tern-logs`
//! stream) and its checkpoints (the `tern-snapshots` object store, by digest).
//!
//! An app's *incarnation* counts its placements: it grows by one each time the control
//! plane puts the app on a node (deploy, move, restore after a node died). A node runs
//! an incarnation at most once, and stops its instance as soon as the app's record
//! names a later incarnation on another node, so no app ever runs twice.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::backbone::{Backbone, BackboneError, js_err};
use crate::model::InstanceState;
use crate::protocol::{END, INCARNATION, NOTE, OFFSET, log_subject, log_subjects};

/// A deployment: its manifest and where the control plane wants it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: String,
    /// The manifest as deployed (TOML); its `module` is the digest below.
    pub manifest: String,
    /// SHA-256 (hex) of the module in `tern-modules`.
    pub module: String,
    /// Files copied into the app's volumes before its first start.
    #[serde(default)]
    pub seeds: Vec<SeedFile>,
    /// The node that should run it; `None` while no node can (pending).
    pub node: Option<String>,
    /// Grows by one at each placement.
    pub incarnation: u64,
    /// Placements after a node died or the app failed to start (not moves).
    #[serde(default)]
    pub restarts: u32,
    /// The checkpoint the incarnation starts from, when it continues an earlier one.
    #[serde(default)]
    pub restore: Option<CheckpointRef>,
    /// Why the app is where it is (the last placement's reason), for `tern ps`.
    #[serde(default)]
    pub note: String,
    /// The deployment this app is a replica of (`NAME` for `NAME-1` … `NAME-N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,
    /// The module's signatures, as deployed (`tern sign`): its node checks them against
    /// the manifest's `signed_by` before it runs any of the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signatures: Option<tern_trust::Signatures>,
}

impl AppRecord {
    /// The checkpoint this incarnation resumes from: its own last one, if `status` (the
    /// app's) says it ran and was checkpointed, else the one its placement names.
    pub fn resume_point(&self, status: Option<&InstanceStatus>) -> Option<CheckpointRef> {
        status
            .filter(|s| s.incarnation == self.incarnation)
            .and_then(|s| s.checkpoint.clone())
            .or_else(|| self.restore.clone())
    }
}

/// A file of a volume's seed, stored in `tern-modules` by digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedFile {
    /// The volume's guest path, such as `/data`.
    pub volume: String,
    /// The file's path inside the volume, `/`-separated, relative.
    pub path: String,
    pub digest: String,
}

/// A checkpoint in `tern-snapshots`: a bundle of the snapshot and the volumes' files,
/// taken at one safe point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    pub digest: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Bytes of stdout the app had written when it was taken.
    pub stdout: u64,
    pub size: u64,
}

/// What an instance is doing, as the node running it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub app: String,
    pub node: String,
    pub incarnation: u64,
    pub state: InstanceState,
    /// Starts from scratch or from a checkpoint after the first.
    pub restarts: u32,
    #[serde(default)]
    pub checkpoint: Option<CheckpointRef>,
    /// The last thing that happened to it, in one line.
    #[serde(default)]
    pub note: String,
    pub updated_ms: u64,
}

/// An app as `tern ps` shows it: the record and the status of its incarnation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppView {
    pub name: String,
    pub node: Option<String>,
    /// `pending`, `placed`, `running`, `migrating`, `exited` or `failed`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub incarnation: u64,
    pub restarts: u32,
    /// Seconds since its last checkpoint.
    pub checkpoint_age_s: Option<f64>,
    pub note: String,
    /// Its move under way, if any: `→ cloud (copying)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<String>,
}

impl AppView {
    pub fn of(record: &AppRecord, status: Option<&InstanceStatus>) -> AppView {
        let current = status.filter(|s| s.incarnation == record.incarnation);
        let state = match (current, &record.node) {
            (Some(s), _) => s.state.clone(),
            (None, Some(_)) => InstanceState::Placed,
            (None, None) => InstanceState::Pending,
        };
        let (code, reason) = match &state {
            InstanceState::Exited { code } => (Some(*code), None),
            InstanceState::Failed { reason } => (None, Some(reason.clone())),
            _ => (None, None),
        };
        let checkpoint = current
            .and_then(|s| s.checkpoint.as_ref())
            .or(record.restore.as_ref());
        let note = match current {
            Some(s) if !s.note.is_empty() => s.note.clone(),
            _ => record.note.clone(),
        };
        AppView {
            name: record.name.clone(),
            node: record.node.clone(),
            state: state.name().to_owned(),
            code,
            reason,
            incarnation: record.incarnation,
            // A node that restarted and ran the same incarnation again counts it.
            restarts: current.map_or(record.restarts, |s| s.restarts.max(record.restarts)),
            checkpoint_age_s: checkpoint.map(|c| now_ms().saturating_sub(c.at_ms) as f64 / 1e3),
            note,
            moving: None,
        }
    }

    /// The row with `mv`, the app's move under way, shown.
    #[must_use]
    pub fn with_move(mut self, mv: Option<&crate::moves::MoveRecord>) -> AppView {
        self.moving = mv.map(|m| {
            let how = if m.live { "" } else { "restart " };
            match &m.to {
                Some(to) => format!("{how}→ {to} ({}, {})", m.state.name(), m.id),
                None => format!("{how}off {} ({}, {})", m.from, m.state.name(), m.id),
            }
        });
        self
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A change to the deployments.
#[derive(Debug, Clone, PartialEq)]
pub enum AppEvent {
    Put(Box<AppRecord>, u64),
    Removed(String),
}

/// What a fenced publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored at this sequence of the stream.
    Stored(u64),
    /// Not stored: the last message on the subject is not the one expected.
    Conflict,
}

/// Where an app's stdout stands in the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastOutput {
    /// Bytes of its stdout the stream holds (the offset after its last chunk).
    pub offset: u64,
    /// The incarnation whose end marker is the last message, if it is one.
    pub end: Option<u64>,
    /// The stream sequence of the last message on its stdout (0: none).
    pub seq: u64,
    /// The incarnation that wrote that message (0: none).
    pub incarnation: u64,
}

/// A chunk of an app's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// The stream's sequence number: ask for what comes after it.
    pub seq: u64,
    pub stderr: bool,
    /// A note of Tern's, not the app's output.
    pub note: bool,
    pub bytes: Vec<u8>,
}

/// What names a chunk of an app's output within its incarnation, for the stream's
/// de-duplication: a stdout chunk by its offset, a stderr chunk by its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogId {
    Out(u64),
    Err(u64),
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogId::Out(o) => write!(f, "o{o}"),
            LogId::Err(n) => write!(f, "e{n}"),
        }
    }
}

impl Backbone {
    /// Every deployment, by name, with its revision.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn apps(&self) -> Result<Vec<(AppRecord, u64)>, BackboneError> {
        let mut keys = match self.apps.keys().await {
            Ok(k) => k.boxed(),
            Err(e) => return Err(js_err("list apps", e)),
        };
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| js_err("list apps", e))?;
            if let Some((r, rev)) = self.app(&key).await? {
                out.push((r, rev));
            }
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        Ok(out)
    }

    /// One deployment and its revision, if it exists.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`], or [`BackboneError::BadEntry`] for an entry that is
    /// not a record.
    pub async fn app(&self, name: &str) -> Result<Option<(AppRecord, u64)>, BackboneError> {
        let entry = self
            .apps
            .entry(name)
            .await
            .map_err(|e| js_err("read app", e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Ok(Some((decode(&e.value)?, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `record` if the app is still at `revision` (0: only if it does not
    /// exist), and returns the new revision; `None` when someone changed it first.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn put_app(
        &self,
        record: &AppRecord,
        revision: u64,
    ) -> Result<Option<u64>, BackboneError> {
        let json = serde_json::to_vec(record).map_err(|e| js_err("encode app", e))?;
        crate::backbone::compare_and_set(&self.apps, &record.name, json, revision, "store app")
            .await
    }

    /// Removes a deployment; the node running it stops it.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn remove_app(&self, name: &str) -> Result<(), BackboneError> {
        self.apps
            .delete(name)
            .await
            .map_err(|e| js_err("remove app", e))?;
        // The status stays: a later app of the same name goes on from its incarnation.
        Ok(())
    }

    /// Deployments as they are, then as they change, pushed by the server.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn watch_apps(
        &self,
    ) -> Result<
        impl futures_util::Stream<Item = Result<AppEvent, BackboneError>> + use<>,
        BackboneError,
    > {
        let watch = self
            .apps
            .watch_with_history(">")
            .await
            .map_err(|e| js_err("watch apps", e))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| js_err("watch apps", e))?;
            match entry.operation {
                kv::Operation::Put => {
                    decode(&entry.value).map(|r| AppEvent::Put(Box::new(r), entry.revision))
                }
                kv::Operation::Delete | kv::Operation::Purge => Ok(AppEvent::Removed(entry.key)),
            }
        }))
    }

    /// Instances' statuses as they are, then as they change.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn watch_statuses(
        &self,
    ) -> Result<
        impl futures_util::Stream<Item = Result<InstanceStatus, BackboneError>> + use<>,
        BackboneError,
    > {
        let puts = crate::backbone::watch_puts(&self.status, "watch instances").await?;
        Ok(puts.map(|entry| decode(&entry?.value)))
    }

    /// Every instance's status, by app.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn statuses(&self) -> Result<Vec<InstanceStatus>, BackboneError> {
        let mut keys = match self.status.keys().await {
            Ok(k) => k.boxed(),
            Err(e) => return Err(js_err("list instances", e)),
        };
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| js_err("list instances", e))?;
            if let Some(s) = self.status(&key).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The status of `app`'s instance, if one was reported.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn status(&self, app: &str) -> Result<Option<InstanceStatus>, BackboneError> {
        match self
            .status
            .get(app)
            .await
            .map_err(|e| js_err("read instance", e))?
        {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reports `status`, unless a later incarnation of the app has reported already.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn put_status(&self, status: &InstanceStatus) -> Result<(), BackboneError> {
        for _ in 0..8 {
            let entry = self
                .status
                .entry(status.app.as_str())
                .await
                .map_err(|e| js_err("read instance", e))?;
            let json = serde_json::to_vec(status).map_err(|e| js_err("encode instance", e))?;
            let written = match entry {
                Some(e) if e.operation == kv::Operation::Put => {
                    if let Ok(old) = decode::<InstanceStatus>(&e.value)
                        && old.incarnation > status.incarnation
                    {
                        return Ok(());
                    }
                    self.status
                        .update(status.app.as_str(), json.into(), e.revision)
                        .await
                        .is_ok()
                }
                _ => self
                    .status
                    .put(status.app.as_str(), json.into())
                    .await
                    .is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        Err(js_err(
            "store instance",
            "it kept changing under this writer",
        ))
    }

    /// Publishes a chunk of `app`'s output and waits for the stream to hold it: a
    /// publish that fails or is not acknowledged in time is tried again until it is,
    /// so chunks go out once each, in order. `id` names the chunk uniquely in the app
    /// (the stream drops a second copy of an id it holds, so a retry of a publish
    /// that was stored but whose acknowledgement was lost stores nothing twice).
    ///
    /// With `expect`, a chunk is fenced: it is stored only if the last message on the
    /// subject is still the one at that sequence (the last this writer knows of);
    /// otherwise nothing is stored and [`Published::Conflict`] says someone wrote. The
    /// writer reads [`Backbone::last_output`] to learn who: a writer whose incarnation
    /// is older stops (its app runs elsewhere now); one that finds its own chunk there
    /// (a retry of a chunk whose acknowledgement was lost) goes on after it.
    pub async fn publish_log(
        &self,
        app: &str,
        incarnation: u64,
        chunk: LogId,
        offset: Option<u64>,
        expect: Option<u64>,
        bytes: Vec<u8>,
    ) -> Published {
        let mut headers = HeaderMap::new();
        headers.insert(INCARNATION, incarnation.to_string().as_str());
        if let Some(o) = offset {
            headers.insert(OFFSET, o.to_string().as_str());
        }
        if let Some(seq) = expect {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                seq.to_string().as_str(),
            );
        }
        let stderr = matches!(chunk, LogId::Err(_));
        let id = format!("{app}.{incarnation}.{chunk}");
        self.publish(log_subject(app, stderr), headers, bytes, &id)
            .await
    }

    /// Puts a note of Tern's in `app`'s output stream (on its stderr subject, so that
    /// it changes no stdout offset), tried again as output is.
    pub async fn publish_note(&self, app: &str, incarnation: u64, text: &str) {
        let mut headers = HeaderMap::new();
        headers.insert(INCARNATION, incarnation.to_string().as_str());
        headers.insert(NOTE, "1");
        let id = format!("{app}.{incarnation}.note");
        self.publish(
            log_subject(app, true),
            headers,
            text.as_bytes().to_vec(),
            &id,
        )
        .await;
    }

    /// Says that incarnation `incarnation` of `app` has published all its output
    /// (tried again until the stream holds it, fenced as [`Backbone::publish_log`]).
    pub async fn end_log(&self, app: &str, incarnation: u64, expect: u64) -> Published {
        let mut headers = HeaderMap::new();
        headers.insert(END, incarnation.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expect.to_string().as_str(),
        );
        let id = format!("{app}.{incarnation}.end");
        self.publish(log_subject(app, false), headers, Vec::new(), &id)
            .await
    }

    async fn publish(
        &self,
        subject: String,
        mut headers: HeaderMap,
        bytes: Vec<u8>,
        id: &str,
    ) -> Published {
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        let bytes = bytes::Bytes::from(bytes);
        let mut wait = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            let stored = async {
                self.js
                    .publish_with_headers(subject.clone(), headers.clone(), bytes.clone())
                    .await
                    .map_err(|e| (false, js_err("publish output", e)))?
                    .await
                    .map_err(|e| {
                        let conflict =
                            e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence;
                        (conflict, js_err("publish output", e))
                    })
            };
            match stored.await {
                Ok(ack) => {
                    if failures > 0 {
                        tracing::info!(%subject, failures, "output published after retries");
                    }
                    return Published::Stored(ack.sequence);
                }
                Err((true, _)) => return Published::Conflict,
                Err((false, e)) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(10) {
                        tracing::warn!(%subject, error = %e, failures, "output not stored yet; trying again");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Where `app`'s stdout stands: see [`LastOutput`]. (The end marker carries no
    /// offset: the chunk before it does.)
    ///
    /// # Errors
    /// [`BackboneError::JetStream`] when the stream cannot be read; an app that has
    /// written nothing is not an error.
    pub async fn last_output(&self, app: &str) -> Result<LastOutput, BackboneError> {
        let subject = log_subject(app, false);
        let last = match self.logs.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(LastOutput::default());
            }
            Err(e) => return Err(js_err("read output", e)),
        };
        let mut out = LastOutput {
            offset: 0,
            end: header_u64(&last.headers, END),
            seq: last.sequence,
            incarnation: header_u64(&last.headers, END)
                .or_else(|| header_u64(&last.headers, INCARNATION))
                .unwrap_or(0),
        };
        if let (None, Some(o)) = (out.end, header_u64(&last.headers, OFFSET)) {
            out.offset = o + last.payload.len() as u64;
            return Ok(out);
        }
        // Walk back from the marker to the last chunk with an offset.
        let mut seq = last.sequence;
        while seq > 1 {
            seq -= 1;
            let Ok(m) = self.logs.get_raw_message(seq).await else {
                continue;
            };
            if m.subject.as_str() != subject {
                continue;
            }
            if let Some(o) = header_u64(&m.headers, OFFSET) {
                out.offset = o + m.payload.len() as u64;
                break;
            }
        }
        Ok(out)
    }

    /// `app`'s output after sequence `after`, at most `max` bytes of it (at least one
    /// chunk), and whether the stream holds more.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn logs(
        &self,
        app: &str,
        after: u64,
        max: usize,
    ) -> Result<Vec<LogChunk>, BackboneError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        let filter = log_subjects(app);
        let mut seq = after + 1;
        loop {
            let m = self
                .logs
                .direct_get_next_for_subject(&filter, Some(seq))
                .await;
            let m = match m {
                Ok(m) => m,
                Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(js_err("read output", e)),
            };
            seq = m.sequence + 1;
            if m.payload.is_empty() {
                continue;
            }
            total += m.payload.len();
            out.push(LogChunk {
                seq: m.sequence,
                stderr: m.subject.ends_with(".err"),
                note: m.headers.get(NOTE).is_some(),
                bytes: m.payload.to_vec(),
            });
            if total >= max {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets `app`'s output.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn purge_logs(&self, app: &str) -> Result<(), BackboneError> {
        self.logs
            .purge()
            .filter(log_subjects(app))
            .await
            .map_err(|e| js_err("purge output", e))?;
        Ok(())
    }

    /// Stores a checkpoint bundle under its SHA-256.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn put_snapshot(
        &self,
        path: &std::path::Path,
    ) -> Result<(String, u64), BackboneError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| js_err(format!("read {}", path.display()), e))?;
        let digest = tern_runtime::digest(&bytes);
        // The same bytes are there already (an app at rest checkpoints the same state
        // again): storing them again would replace the object, which deletes its old
        // chunks, and a node may not delete.
        if let Ok(info) = self.snapshots.info(digest.as_str()).await
            && !info.deleted
            && info.size == bytes.len()
        {
            return Ok((digest, bytes.len() as u64));
        }
        let mut reader = bytes.as_slice();
        self.snapshots
            .put(digest.as_str(), &mut reader)
            .await
            .map_err(|e| js_err("store checkpoint", e))?;
        Ok((digest, bytes.len() as u64))
    }

    /// The checkpoint bundle stored under `digest`, checked against it.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`] when it is missing or does not match.
    pub async fn snapshot(&self, digest: &str) -> Result<Vec<u8>, BackboneError> {
        crate::backbone::read_object(&self.snapshots, digest, "checkpoint").await
    }

    /// Marks `node` drained (no app is placed on it), or not.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn drain(&self, node: &str, drained: bool) -> Result<(), BackboneError> {
        if drained {
            self.drains
                .put(node, "drained".into())
                .await
                .map_err(|e| js_err("drain", e))?;
        } else {
            self.drains
                .delete(node)
                .await
                .map_err(|e| js_err("undrain", e))?;
        }
        Ok(())
    }

    /// The drained nodes, as they are and as they change: `(node, drained)`.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn watch_drains(
        &self,
    ) -> Result<impl futures_util::Stream<Item = (String, bool)> + use<>, BackboneError> {
        let watch = self
            .drains
            .watch_with_history(">")
            .await
            .map_err(|e| js_err("watch drains", e))?;
        Ok(watch.filter_map(|e| {
            std::future::ready(e.ok().map(|e| (e.key, e.operation == kv::Operation::Put)))
        }))
    }

    /// Deletes a checkpoint that a later one replaced.
    pub async fn drop_snapshot(&self, digest: &str) {
        let _ = self.snapshots.delete(digest).await;
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.as_str().parse().ok()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BackboneError> {
    serde_json::from_slice(bytes).map_err(|e| BackboneError::BadEntry {
        reason: e.to_string(),
    })
}

/// How long a node waits for the previous incarnation's output to be all published
/// before it publishes its own anyway, when that incarnation's node is gone from the
/// registry (dead, or declared lost).
pub const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// How long a node waits for it while that node is still in the registry: a source
/// slowed down by a busy machine or backbone still has output to publish, and going on
/// without it would lose it.
pub const HANDOVER_LIMIT: Duration = Duration::from_secs(300);
