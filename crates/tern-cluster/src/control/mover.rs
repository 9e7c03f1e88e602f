//! The reconciler of moves: it drives every [`MoveRecord`] that is not over, one step
//! at a time, each step written with compare-and-set on the move's revision. It reads
//! the whole record and the world at each step and never relies on having seen an
//! event: a move whose control plane died mid-step is picked up again from where its
//! record stands, and a step done twice does what it did once (the nodes answer a
//! repeated `Receive` or `Migrate` with what they did the first time).
//!
//! - **asked**, live: waits for the app to run (a move asked while the app starts is
//!   not refused), chooses a destination if none was named, asks it to `Receive`, and
//!   records where it listens (`ready`). A restart goes to `done` in one step.
//! - **ready**: asks the source to `Migrate` there; once the destination runs the app
//!   (its answer, or its status of the next incarnation), `switched`. On failure the
//!   destination is told to give up, and the app keeps running where it was.
//! - **switched**: the app's record names the destination and the next incarnation,
//!   with the source's last checkpoint as the newest state that exists elsewhere
//!   (should the destination die before its own first checkpoint); `done`.

use std::collections::HashMap;
use std::time::Duration;

use super::Shared;
use crate::apps::{AppRecord, InstanceStatus, now_ms};
use crate::manifest::{self, Manifest};
use crate::model::InstanceState;
use crate::moves::{MoveRecord, MoveState};
use crate::protocol::{NodeCommand, NodeReply, app_events_subject, command_subject};
use crate::scheduler::{Request, Verdict};

/// How long a node may take to start listening for a migration.
const RECEIVE_WAIT: Duration = Duration::from_secs(30);
/// How long one ask of a live migration waits for its end (asked again after).
const MIGRATE_WAIT: Duration = Duration::from_secs(60);
/// How long a live move waits for its app to run before it gives up (a drain then
/// restarts the app elsewhere).
const START_WAIT: Duration = Duration::from_secs(300);
/// Live moves driven at once (each copies memory over the network and holds a
/// listener on its destination); the others wait their turn.
const AT_ONCE: usize = 4;
/// Restarts driven at once: each is a few record writes, so a lost node's apps all go
/// at once but the backbone is not flooded.
const RESTARTS_AT_ONCE: usize = 64;
/// How often the reconciler looks at every move (the watch keeps its view current).
const RESYNC: Duration = Duration::from_millis(250);

/// Drives every move that is not over, for as long as the control plane runs.
pub(super) async fn drive(s: Shared) {
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<String>();
    // The moves under way, by app: whether each is live.
    let mut working: HashMap<String, bool> = HashMap::new();
    let mut tick = tokio::time::interval(RESYNC);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A move that ended frees its turn at once.
            Some(app) = done.recv() => {
                working.remove(&app);
            }
        }
        let todo: Vec<(MoveRecord, u64)> = match s.view.read() {
            Ok(v) => {
                let mut live = working.values().filter(|l| **l).count();
                let mut restarts = working.len() - live;
                v.moves_in_flight()
                    .filter(|(m, _)| !working.contains_key(&m.app))
                    .filter(|(m, _)| {
                        let (n, most) = if m.live {
                            (&mut live, AT_ONCE)
                        } else {
                            (&mut restarts, RESTARTS_AT_ONCE)
                        };
                        *n += 1;
                        *n <= most
                    })
                    .map(|(m, r)| (m.clone(), r))
                    .collect()
            }
            Err(_) => return,
        };
        for (mv, rev) in todo {
            working.insert(mv.app.clone(), mv.live);
            let (s, done_tx) = (s.clone(), done_tx.clone());
            tokio::spawn(async move {
                let app = mv.app.clone();
                let mut next = Some((mv, rev));
                // One step after another while each goes through; a step that waits
                // or loses a race leaves the move to the next look.
                while let Some((mv, rev)) = next.take() {
                    if mv.state.is_over() {
                        break;
                    }
                    next = step(&s, mv, rev).await;
                }
                let _ = done_tx.send(app);
            });
        }
    }
}

/// One step of `mv` (at revision `rev`); the move as written, to go on with, or `None`
/// when it must wait (or someone else wrote it first).
async fn step(s: &Shared, mv: MoveRecord, rev: u64) -> Option<(MoveRecord, u64)> {
    let (app, app_rev) = match s.backbone.app(&mv.app).await {
        Ok(Some(a)) => a,
        Ok(None) => return fail(s, mv, rev, "the app was removed".into()).await,
        Err(e) => {
            tracing::warn!(app = %mv.app, error = %e, "move: the app's record is unreadable; trying again");
            return None;
        }
    };
    let status = match s.backbone.status(&mv.app).await {
        Ok(st) => st,
        Err(e) => {
            tracing::warn!(app = %mv.app, error = %e, "move: the app's status is unreadable; trying again");
            return None;
        }
    };
    // The fence: only incarnation `mv.incarnation` moves.
    if app.incarnation != mv.incarnation {
        let arrived = app.incarnation == mv.incarnation + 1 && app.node == mv.to;
        if arrived {
            let note = if mv.note.is_empty() {
                app.note.clone()
            } else {
                mv.note.clone()
            };
            return advance(s, mv, rev, MoveState::Done, note).await;
        }
        if let MoveState::Ready { .. } = mv.state {
            cancel(s, &mv).await;
        }
        let note = format!(
            "{} was placed again meanwhile (incarnation {}); this move did nothing",
            mv.app, app.incarnation
        );
        return fail(s, mv, rev, note).await;
    }
    let Ok(m) = manifest::parse(&app.manifest) else {
        return fail(s, mv, rev, "its manifest no longer reads".into()).await;
    };
    let current = status
        .as_ref()
        .filter(|st| st.incarnation == app.incarnation);
    match mv.state.clone() {
        MoveState::Asked => asked(s, mv, rev, app, app_rev, &m, current).await,
        MoveState::Ready { .. } => ready(s, mv, rev, status.as_ref(), &m).await,
        MoveState::Switched => switched(s, mv, rev, app, app_rev, current).await,
        MoveState::Done | MoveState::Failed => None,
    }
}

async fn asked(
    s: &Shared,
    mut mv: MoveRecord,
    rev: u64,
    app: AppRecord,
    app_rev: u64,
    m: &Manifest,
    status: Option<&InstanceStatus>,
) -> Option<(MoveRecord, u64)> {
    if status.is_some_and(|st| {
        matches!(
            st.state,
            InstanceState::Exited { .. } | InstanceState::Failed { .. }
        )
    }) {
        let note = format!("{} ended before it could move", mv.app);
        return fail(s, mv, rev, note).await;
    }
    if app.node.as_deref() != Some(mv.from.as_str()) {
        let note = format!("{} is not on {} any more", mv.app, mv.from);
        return fail(s, mv, rev, note).await;
    }
    let draining = mv.why.starts_with("drain ");
    if !mv.live || !m.migratable {
        return restart(s, mv, rev, app, app_rev, m, status).await;
    }
    let running = status.is_some_and(|st| st.state == InstanceState::Running);
    if !running {
        let waited = Duration::from_millis(now_ms().saturating_sub(mv.asked_ms));
        if waited < START_WAIT {
            return None;
        }
        if draining {
            mv.live = false;
            return restart(s, mv, rev, app, app_rev, m, status).await;
        }
        let note = format!(
            "{} did not run within {} s; it stays on {}",
            mv.app,
            START_WAIT.as_secs(),
            mv.from
        );
        return fail(s, mv, rev, note).await;
    }
    // The destination: the one named, which must pass every filter, or the best.
    let to = match destination(s, &mv, m) {
        Ok(to) => to,
        Err(why) => return fail(s, mv, rev, why).await,
    };
    mv.to = Some(to.clone());
    let receive = NodeCommand::Receive {
        app: mv.app.clone(),
        incarnation: mv.incarnation + 1,
        from: mv.incarnation,
        source: mv.from.clone(),
    };
    match ask(s, &to, &receive, RECEIVE_WAIT).await {
        Ok(NodeReply {
            addr: Some(addr), ..
        }) => advance(s, mv, rev, MoveState::Ready { addr }, String::new()).await,
        Ok(_) | Err(_) if draining => {
            tracing::warn!(app = %mv.app, %to, "drain: no live move; restarting it elsewhere");
            mv.live = false;
            mv.to = None;
            restart(s, mv, rev, app, app_rev, m, status).await
        }
        Ok(_) => {
            let note = format!(
                "{to} cannot receive {}: no address; it stays on {}",
                mv.app, mv.from
            );
            fail(s, mv, rev, note).await
        }
        Err(e) => {
            let note = format!(
                "{to} cannot receive {}: {e}; it stays on {}",
                mv.app, mv.from
            );
            fail(s, mv, rev, note).await
        }
    }
}

/// The node a move goes to: the one it names, if it passes every filter now, else the
/// best the scheduler finds (the source and drained nodes left out).
/// The node `mv` goes to: the one named, if it can take the app, or the best. The
/// choice is claimed in the view under the same lock, so that moves chosen at once do
/// not all take the same room.
fn destination(s: &Shared, mv: &MoveRecord, m: &Manifest) -> Result<String, String> {
    let mut v = s
        .view
        .write()
        .map_err(|_| "the control plane's view is unavailable".to_owned())?;
    let chosen = choose_destination(s, &v, mv, m);
    if let Ok(to) = &chosen {
        v.claim(&mv.app, to, m.memory);
    }
    chosen
}

fn choose_destination(
    s: &Shared,
    v: &super::view::View,
    mv: &MoveRecord,
    m: &Manifest,
) -> Result<String, String> {
    let c = v.candidates(Some(&mv.app));
    let mut excluded = c.excluded();
    excluded.push((mv.from.as_str(), "the app is moving off it"));
    let req = Request {
        current: Some(&mv.from),
        exclude: &excluded,
        ..Request::new(m)
    };
    let Some(to) = &mv.to else {
        return c.choose(&s.scheduler, &req, &v.rtt, &mv.app);
    };
    let e = s.scheduler.explain(&req, &c.nodes, &v.rtt);
    match e.nodes.iter().find(|(n, _)| n == to) {
        None => Err(format!(
            "no node named {to} is in the continuum now; {} stays on {}",
            mv.app, mv.from
        )),
        Some((_, Verdict::Rejected { rejections })) => {
            let why: Vec<String> = rejections.iter().map(ToString::to_string).collect();
            Err(format!(
                "{to} cannot take {}: {}; it stays on {}",
                mv.app,
                why.join(", "),
                mv.from
            ))
        }
        Some((_, Verdict::Eligible { .. })) => Ok(to.clone()),
    }
}

async fn ready(
    s: &Shared,
    mut mv: MoveRecord,
    rev: u64,
    status: Option<&InstanceStatus>,
    m: &Manifest,
) -> Option<(MoveRecord, u64)> {
    let MoveState::Ready { addr } = mv.state.clone() else {
        return None;
    };
    let to = mv.to.clone().unwrap_or_default();
    let taken_over = |st: Option<&InstanceStatus>| {
        st.is_some_and(|st| st.incarnation == mv.incarnation + 1 && st.node == to)
    };
    if taken_over(status) {
        return advance(s, mv, rev, MoveState::Switched, String::new()).await;
    }
    // The source's newest checkpoint, kept with the move until its record changes.
    if let Some(c) = status
        .filter(|st| st.incarnation == mv.incarnation)
        .and_then(|st| st.checkpoint.clone())
    {
        mv.checkpoint = Some(c);
    }
    let site = s
        .view
        .read()
        .ok()
        .and_then(|v| v.site_of(&to))
        .unwrap_or_default();
    let send = NodeCommand::Migrate {
        app: mv.app.clone(),
        incarnation: mv.incarnation,
        to: to.clone(),
        site,
        addr,
    };
    match ask(s, &mv.from, &send, MIGRATE_WAIT).await {
        Ok(r) => {
            crash_point("migrated");
            mv.stats = r.moved;
            advance(s, mv, rev, MoveState::Switched, String::new()).await
        }
        Err(e) => {
            // The answer may be what was lost: the destination's status tells.
            let now = s.backbone.status(&mv.app).await.ok().flatten();
            if taken_over(now.as_ref()) {
                return advance(s, mv, rev, MoveState::Switched, String::new()).await;
            }
            // A source that said nothing (slow, or its answer lost) may still be
            // handing over: ask again later, for a while, unless it was declared lost.
            let source_alive = s.view.read().is_ok_and(|v| v.nodes.contains_key(&mv.from));
            let in_ready = Duration::from_millis(now_ms().saturating_sub(mv.updated_ms));
            if matches!(e, Failure::Silent(_)) && source_alive && in_ready < SILENT_WAIT {
                tracing::warn!(app = %mv.app, error = %e, "move: the source said nothing; asking again");
                return None;
            }
            cancel(s, &mv).await;
            if let Failure::Ended(e) = &e {
                tracing::info!(app = %mv.app, reason = %e, "move: the app ended first");
                let note = format!(
                    "{} ended on {} before its migration to {to} finished",
                    mv.app, mv.from
                );
                return fail(s, mv, rev, note).await;
            }
            let note = format!(
                "the migration of {} to {to} failed: {e}; it keeps running on {}",
                mv.app, mv.from
            );
            if mv.why.starts_with("drain ") && m.migratable {
                tracing::warn!(app = %mv.app, %note, "drain: restarting it elsewhere");
                mv.live = false;
                mv.to = None;
                return advance(s, mv, rev, MoveState::Asked, note).await;
            }
            fail(s, mv, rev, note).await
        }
    }
}

async fn switched(
    s: &Shared,
    mv: MoveRecord,
    rev: u64,
    mut app: AppRecord,
    app_rev: u64,
    status: Option<&InstanceStatus>,
) -> Option<(MoveRecord, u64)> {
    let to = mv.to.clone().unwrap_or_default();
    let note = match &mv.stats {
        Some(st) => format!(
            "moved live from {} to {to} ({}): downtime {:.1} ms, {} KiB sent in {} rounds{}",
            mv.from,
            mv.why,
            st.downtime_ms,
            st.bytes.div_ceil(1024),
            st.rounds,
            if st.precopy.is_empty() {
                String::new()
            } else {
                format!("; {}", st.precopy)
            }
        ),
        None => format!("moved live from {} to {to} ({})", mv.from, mv.why),
    };
    // Should the destination die before its own first checkpoint, the newest state
    // that exists is the source's last one (the destination's own, once it has one,
    // comes first: its status carries it).
    app.restore = mv.checkpoint.clone().or_else(|| app.resume_point(status));
    app.node = Some(to);
    app.incarnation = mv.incarnation + 1;
    app.note = note.clone();
    finish(s, mv, rev, app, app_rev, note).await
}

/// A restart elsewhere: the app's record names a node and the next incarnation, which
/// resumes from the app's last checkpoint when it is migratable.
async fn restart(
    s: &Shared,
    mv: MoveRecord,
    rev: u64,
    app: AppRecord,
    app_rev: u64,
    m: &Manifest,
    status: Option<&InstanceStatus>,
) -> Option<(MoveRecord, u64)> {
    let checkpoint = app.resume_point(status).filter(|_| m.migratable);
    let lost = !mv.why.starts_with("drain ");
    let chosen = destination(s, &mv, m);
    let mut next = app.clone();
    next.incarnation += 1;
    next.restarts += 1;
    next.restore = checkpoint.clone();
    let why = &mv.why;
    match &chosen {
        Ok(to) => {
            next.node = Some(to.clone());
            next.note = match &checkpoint {
                Some(c) => format!(
                    "{why}; restored on {to} from its checkpoint of {:.1} s before (the progress since then is redone)",
                    now_ms().saturating_sub(c.at_ms) as f64 / 1e3
                ),
                None if m.migratable => format!(
                    "{why} before the app's first checkpoint; restarted on {to} from its start"
                ),
                None => format!("{why}; restarted on {to} from its start (it is not migratable)"),
            };
        }
        // A drain leaves the app where it is; a lost node's app waits for a node.
        Err(e) if !lost => return fail(s, mv, rev, e.clone()).await,
        Err(e) => {
            next.node = None;
            next.note = format!("{why} and no other node can take the app; it waits: {e}");
        }
    }
    let mut done = mv;
    done.to = next.node.clone();
    let note = next.note.clone();
    finish(s, done, rev, next, app_rev, note).await
}

/// Writes the app's record `app` (at `app_rev`) with its new place, then `mv` done
/// with `note`. A record changed meanwhile (a removal or a placement; a checkpoint's
/// status does not change it) leaves the move to the next look, which reads it again.
async fn finish(
    s: &Shared,
    mv: MoveRecord,
    rev: u64,
    app: AppRecord,
    app_rev: u64,
    note: String,
) -> Option<(MoveRecord, u64)> {
    match s.backbone.put_app(&app, app_rev).await {
        Ok(Some(new_rev)) => {
            if let Ok(mut v) = s.view.write() {
                v.put_app(app, new_rev);
            }
            advance(s, mv, rev, MoveState::Done, note).await
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(app = %mv.app, error = %e, "move: cannot record the app's new place yet");
            None
        }
    }
}

/// Writes `mv` in `state` with `note`; the move as written, or `None` when someone
/// wrote first. A move that ends says so on the app's events.
async fn advance(
    s: &Shared,
    mut mv: MoveRecord,
    rev: u64,
    state: MoveState,
    note: String,
) -> Option<(MoveRecord, u64)> {
    mv.state = state;
    if !note.is_empty() {
        mv.note = note;
    }
    mv.updated_ms = now_ms();
    match s.backbone.put_move(&mv, rev).await {
        Ok(Some(new_rev)) => {
            tracing::info!(app = %mv.app, id = %mv.id, state = mv.state.name(), note = %mv.note, "move");
            if mv.state.is_over() {
                let _ = s
                    .backbone
                    .client
                    .publish(app_events_subject(&mv.app), mv.note.clone().into())
                    .await;
            }
            if let Ok(mut v) = s.view.write() {
                v.put_move(mv.clone(), new_rev);
            }
            crash_point(mv.state.name());
            Some((mv, new_rev))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(app = %mv.app, error = %e, "move: cannot record its step yet");
            None
        }
    }
}

async fn fail(s: &Shared, mv: MoveRecord, rev: u64, note: String) -> Option<(MoveRecord, u64)> {
    advance(s, mv, rev, MoveState::Failed, note).await
}

/// Tells the destination of `mv` to give up the instance it started for it.
async fn cancel(s: &Shared, mv: &MoveRecord) {
    if let Some(to) = &mv.to {
        let cancel = NodeCommand::Cancel {
            app: mv.app.clone(),
            incarnation: mv.incarnation + 1,
        };
        if let Err(e) = ask(s, to, &cancel, RECEIVE_WAIT).await {
            tracing::warn!(app = %mv.app, %to, error = %e, "move: the destination was not told to give up");
        }
    }
}

/// Crash injection, for the tests that kill the control plane at each step of a move:
/// with `TERN_CRASH_AFTER` set to `copying`, `migrated` (the source's answer came, not
/// yet written) or `switched`, the process ends at once (status 86) right after that
/// step, as a crash there would end it. Read once; unset, it costs one comparison.
fn crash_point(at: &str) {
    static POINT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if POINT
        .get_or_init(|| std::env::var("TERN_CRASH_AFTER").ok())
        .as_deref()
        == Some(at)
    {
        tracing::error!("TERN_CRASH_AFTER={at}: the control plane ends here");
        std::process::exit(86);
    }
}

/// Why a node did not do what it was asked.
#[derive(Debug)]
enum Failure {
    /// It said nothing in time (or is not there): it may have done it.
    Silent(String),
    /// It answered that it did not.
    Refused(String),
    /// It answered that the app ended before it could.
    Ended(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Silent(e) | Failure::Refused(e) | Failure::Ended(e) => f.write_str(e),
        }
    }
}

/// How long a move waits for a source that says nothing (while it is not declared
/// lost) before giving the migration up.
const SILENT_WAIT: Duration = Duration::from_secs(30);

/// Asks `node` to do `cmd` and waits up to `wait` for its answer.
async fn ask(
    s: &Shared,
    node: &str,
    cmd: &NodeCommand,
    wait: Duration,
) -> Result<NodeReply, Failure> {
    let body = serde_json::to_vec(cmd).map_err(|e| Failure::Refused(e.to_string()))?;
    let request = async_nats::Request::new()
        .payload(body.into())
        .timeout(Some(wait));
    let answer = s
        .backbone
        .client
        .send_request(command_subject(node), request)
        .await
        .map_err(|e| Failure::Silent(format!("node {node} did not answer: {e}")))?;
    let reply: NodeReply = serde_json::from_slice(&answer.payload)
        .map_err(|e| Failure::Refused(format!("node {node} answered something else: {e}")))?;
    match reply.error {
        Some(e) if reply.ended => Err(Failure::Ended(e)),
        Some(e) => Err(Failure::Refused(e)),
        None => Ok(reply),
    }
}
