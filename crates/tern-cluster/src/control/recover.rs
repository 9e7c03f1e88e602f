//! Keeping apps placed: an app whose node was declared lost gets a restart move (the
//! reconciler places it again, from its last checkpoint when it is migratable, from
//! its start otherwise), and an app that waits for a node gets one as soon as one can
//! take it.

use std::collections::HashMap;

use futures_util::StreamExt as _;
use std::time::{Duration, Instant};

use super::Shared;
use crate::apps::AppRecord;
use crate::manifest;
use crate::moves::MoveRecord;
use crate::scheduler::Request;

/// How often the control plane looks for apps to place again.
const SWEEP: Duration = Duration::from_millis(500);
/// How long after the control plane starts before an app whose node is not in the
/// view counts as orphaned.
const SETTLE: Duration = Duration::from_secs(2);
/// How long before an app that could not be placed is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// Apps asked for (or placed) at once.
const AT_ONCE: usize = 32;

/// For as long as it runs: a restart move for every app whose node is gone (and that
/// is not being moved already), a placement for every app that waits for a node.
pub(super) async fn keep_placed(s: Shared) {
    let started = Instant::now();
    // What was asked a moment ago, until the watch shows it (or, for an app that
    // still waits for a node, until it is time to try again).
    let mut busy: HashMap<(String, u64), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(SWEEP).await;
        // A node the view does not hold yet may only be late to say so (the registry's
        // watch is still replaying): wait a little after starting before taking any
        // node for gone.
        let settled = started.elapsed() > SETTLE;
        let todo: Vec<(AppRecord, u64)> = match s.view.read() {
            Ok(v) => v
                .apps()
                .filter(|p| v.moving(&p.record.name).is_none())
                .filter(|p| match &p.record.node {
                    Some(n) => settled && !v.nodes.contains_key(n) && !v.has_ended(&p.record),
                    None => true,
                })
                .map(|p| (p.record.clone(), p.rev))
                .collect(),
            Err(_) => return,
        };
        busy.retain(|_, at| at.elapsed() < RETRY);
        let fresh: Vec<(AppRecord, u64)> = todo
            .into_iter()
            .filter(|(record, _)| {
                let key = (record.name.clone(), record.incarnation);
                match busy.entry(key) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(Instant::now());
                        true
                    }
                    std::collections::hash_map::Entry::Occupied(_) => false,
                }
            })
            .collect();
        // A lost node's apps, thousands perhaps, are asked for several at once: each
        // is a read and a write on the backbone.
        futures_util::stream::iter(fresh)
            .for_each_concurrent(AT_ONCE, |(record, rev)| {
                let s = &s;
                async move {
                    match record.node.clone() {
                        Some(lost) => restart_elsewhere(s, &record, &lost).await,
                        None => place_pending(s, record, rev).await,
                    }
                }
            })
            .await;
    }
}

/// Records a restart move of `record`'s app off node `lost`.
async fn restart_elsewhere(s: &Shared, record: &AppRecord, lost: &str) {
    let mv = MoveRecord::asked(record, lost, None, false, format!("node {lost} is lost"));
    match s.backbone.ask_move(mv).await {
        Ok((mv, rev)) => {
            tracing::info!(app = %mv.app, id = %mv.id, "node {lost} is lost: restarting the app elsewhere");
            if let Ok(mut v) = s.view.write() {
                v.put_move(mv, rev);
            }
        }
        Err(e) => {
            tracing::warn!(app = %record.name, error = %e, "cannot ask for a restart elsewhere yet")
        }
    }
}

/// Places an app that waits for a node, if one can take it now.
async fn place_pending(s: &Shared, record: AppRecord, rev: u64) {
    let Ok(m) = manifest::parse(&record.manifest) else {
        return;
    };
    let chosen = {
        let Ok(mut v) = s.view.write() else { return };
        let c = v.candidates(Some(&record.name));
        let excluded = c.excluded();
        let req = Request {
            exclude: &excluded,
            ..Request::new(&m)
        };
        let chosen = c.choose(&s.scheduler, &req, &v.rtt, &record.name);
        // Claimed under the same lock: pending apps are placed several at once.
        if let Ok(node) = &chosen {
            v.claim(&record.name, node, m.memory);
        }
        chosen
    };
    // Still no node: nothing to write until one comes.
    let Ok(node) = chosen else { return };
    let mut next = record;
    next.note = match &next.restore {
        Some(_) => format!("placed on {node}; resumes from its checkpoint"),
        None => format!("placed on {node}"),
    };
    next.node = Some(node);
    next.incarnation += 1;
    tracing::info!(app = %next.name, note = %next.note, "placed");
    match s.backbone.put_app(&next, rev).await {
        Ok(Some(new_rev)) => {
            let _ = s
                .backbone
                .client
                .publish(
                    crate::protocol::app_events_subject(&next.name),
                    next.note.clone().into(),
                )
                .await;
            if let Ok(mut v) = s.view.write() {
                v.put_app(next, new_rev);
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(app = %next.name, error = %e, "cannot place yet"),
    }
}
