//! Keeping apps placed: an app whose node has left or died is placed again, from its
//! last checkpoint when it is migratable (from its start otherwise), and an app that
//! waits for a node gets one as soon as one can take it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Shared;
use crate::apps::{AppRecord, now_ms};
use crate::manifest;
use crate::model::InstanceState;
use crate::scheduler::Request;

/// How often the control plane looks for apps to place again.
const SWEEP: Duration = Duration::from_millis(500);
/// How long after the control plane starts before an app whose node is not in the
/// view counts as orphaned.
const SETTLE: Duration = Duration::from_secs(2);
/// How long before an app that could not be placed is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// Places again, for as long as it runs, every app whose node is gone.
pub(super) async fn keep_placed(s: Shared) {
    let started = Instant::now();
    // What was placed again a moment ago, until the watch shows it (or, for an app
    // that still waits for a node, until it is time to try again).
    let mut busy: HashMap<(String, u64), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(SWEEP).await;
        // A node the view does not hold yet may only be late to say so (the registry's
        // watch is still replaying): wait a little after starting before taking any
        // node for gone.
        let settled = started.elapsed() > SETTLE;
        let todo: Vec<(AppRecord, u64)> = match s.view.read() {
            Ok(v) => v
                .apps
                .values()
                .filter(|(r, _, _)| match &r.node {
                    Some(n) => settled && !v.nodes.contains_key(n),
                    None => true,
                })
                .map(|(r, rev, _)| (r.clone(), *rev))
                .collect(),
            Err(_) => return,
        };
        busy.retain(|_, at| at.elapsed() < RETRY);
        for (record, rev) in todo {
            let key = (record.name.clone(), record.incarnation);
            if let std::collections::hash_map::Entry::Vacant(e) = busy.entry(key) {
                e.insert(Instant::now());
                replace(&s, record, rev).await;
            }
        }
    }
}

/// Places `record`'s app anew: its node is gone, or it has none.
async fn replace(s: &Shared, record: AppRecord, rev: u64) {
    let Ok(m) = manifest::parse(&record.manifest) else {
        return;
    };
    let status = s.backbone.status(&record.name).await.ok().flatten();
    let current = status
        .as_ref()
        .filter(|st| st.incarnation == record.incarnation);
    if let Some(st) = current
        && matches!(
            st.state,
            InstanceState::Exited { .. } | InstanceState::Failed { .. }
        )
    {
        // It ended before its node went: nothing to run again.
        return;
    }
    let checkpoint = record
        .resume_point(status.as_ref())
        .filter(|_| m.migratable);
    let chosen = {
        let Ok(v) = s.view.read() else { return };
        let nodes = v.nodes_with_reservations_except(&record.name);
        let excluded = v.excluded();
        let req = Request {
            exclude: &excluded,
            ..Request::new(&m)
        };
        match s.scheduler.place(&req, &nodes, &v.rtt) {
            Some(i) => Ok(nodes[i].name.clone()),
            None => Err(super::apps::no_node(
                &record.name,
                &s.scheduler.explain(&req, &nodes, &v.rtt),
            )),
        }
    };
    let gone = record.node.clone();
    let mut next = record.clone();
    match chosen {
        Ok(node) => {
            next.note = match (&gone, &checkpoint) {
                (Some(g), Some(c)) => format!(
                    "node {g} is gone; restored on {node} from its checkpoint of {:.1} s before (the progress since then is redone)",
                    now_ms().saturating_sub(c.at_ms) as f64 / 1e3
                ),
                (Some(g), None) if m.migratable => format!(
                    "node {g} is gone before the app's first checkpoint; restarted on {node} from its start"
                ),
                (Some(g), None) => format!(
                    "node {g} is gone; restarted on {node} from its start (it is not migratable)"
                ),
                (None, Some(_)) => format!("placed on {node}; resumes from its checkpoint"),
                (None, None) => format!("placed on {node}"),
            };
            next.node = Some(node);
            next.incarnation += 1;
            // A pending app counted its restart when its node went.
            next.restarts += u32::from(gone.is_some());
            next.restore = checkpoint;
        }
        Err(why) => {
            if gone.is_none() {
                // Still no node: nothing to write until one comes.
                return;
            }
            next.note = format!(
                "node {} is gone and no other can take the app; it waits: {why}",
                gone.as_deref().unwrap_or_default()
            );
            next.node = None;
            next.incarnation += 1;
            next.restarts += 1;
            next.restore = checkpoint;
        }
    }
    tracing::info!(app = %next.name, note = %next.note, "placed again");
    match s.backbone.put_app(&next, rev).await {
        Ok(Some(_)) => {
            let _ = s
                .backbone
                .client
                .publish(
                    format!("tern.events.{}", next.name),
                    next.note.clone().into(),
                )
                .await;
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(app = %next.name, error = %e, "cannot place again"),
    }
}
