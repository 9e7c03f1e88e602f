//! The control plane deletes the checkpoints nothing will restore from. Nodes store
//! checkpoints but may not delete any (their credentials do not allow it: a node could
//! otherwise delete another app's), so the control plane sweeps the object store.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt as _;

use super::Shared;

/// How often the sweep runs.
const EVERY: Duration = Duration::from_secs(30);
/// A checkpoint younger than this is never deleted: its status may not be written yet.
const YOUNG: Duration = Duration::from_secs(60);

/// Deletes, every [`EVERY`], the checkpoints older than [`YOUNG`] that no app's last
/// two statuses name and no record restores from.
pub(super) async fn sweep(shared: Shared) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let kept = match shared.view.read() {
            Ok(v) => v.kept_checkpoints(),
            Err(_) => return,
        };
        let dropped = once(&shared, &kept).await;
        if dropped > 0 {
            tracing::debug!(dropped, "checkpoints nothing restores from were deleted");
        }
    }
}

async fn once(shared: &Shared, kept: &HashSet<String>) -> usize {
    let Ok(mut list) = shared.backbone.snapshots.list().await else {
        return 0;
    };
    let now = crate::apps::now_ms() / 1000;
    let mut old = Vec::new();
    while let Some(Ok(info)) = list.next().await {
        let age = info.modified.map_or(0, |m| {
            now.saturating_sub(u64::try_from(m.unix_timestamp()).unwrap_or(u64::MAX))
        });
        if !info.deleted && age > YOUNG.as_secs() && !kept.contains(&info.name) {
            old.push(info.name);
        }
    }
    for digest in &old {
        shared.backbone.drop_snapshot(digest).await;
    }
    old.len()
}
