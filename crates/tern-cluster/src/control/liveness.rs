//! Which nodes are alive: the control plane's decision alone, from the heartbeats it
//! receives, timed on its own clock.
//!
//! A node is lost when it has been silent for `lost_after` *while the backbone was
//! answering the control plane*. The control plane sends itself an echo through the
//! server every [`ECHO_EVERY`]; an echo that does not come back within [`ECHO_LATE`]
//! (the server is stalled or gone, or this process was not scheduled) starts the count
//! again for every node once echoes come back. So a stalled nats-server, a server
//! restart or a starved control plane never makes a node lost: only a node that is
//! silent on a backbone that works is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the control plane sends itself an echo through the server.
pub(super) const ECHO_EVERY: Duration = Duration::from_millis(250);
/// An echo later than this means the backbone (or this process) was not answering.
pub(super) const ECHO_LATE: Duration = Duration::from_secs(1);

/// Each node's last sign of life, and since when the backbone has answered without a
/// gap.
#[derive(Debug)]
pub(super) struct Liveness {
    lost_after: Duration,
    seen: HashMap<String, Instant>,
    /// `None` while the backbone does not answer.
    healthy_since: Option<Instant>,
    /// When the last echo came back.
    last_echo: Option<Instant>,
}

impl Liveness {
    pub(super) fn new(lost_after: Duration) -> Liveness {
        Liveness {
            lost_after,
            seen: HashMap::new(),
            healthy_since: None,
            last_echo: None,
        }
    }

    /// `node` said it is alive (a heartbeat, or its registration) at `at`.
    pub(super) fn seen(&mut self, node: &str, at: Instant) {
        self.seen.insert(node.to_owned(), at);
    }

    /// `node` left or was declared lost: it is no longer watched.
    pub(super) fn forget(&mut self, node: &str) {
        self.seen.remove(node);
    }

    /// An echo came back at `at`. After a gap longer than [`ECHO_LATE`] (or the first
    /// time), the backbone counts as answering from now on only.
    pub(super) fn echo(&mut self, at: Instant) {
        let gap = self
            .last_echo
            .is_none_or(|last| at.saturating_duration_since(last) > ECHO_LATE);
        if gap || self.healthy_since.is_none() {
            self.healthy_since = Some(at);
        }
        self.last_echo = Some(at);
    }

    /// An echo did not come back in time: the backbone is not answering.
    pub(super) fn silent_backbone(&mut self) {
        self.healthy_since = None;
    }

    /// Whether the backbone is answering now.
    pub(super) fn backbone_answers(&self, now: Instant) -> bool {
        self.healthy_since.is_some()
            && self
                .last_echo
                .is_some_and(|e| now.saturating_duration_since(e) <= ECHO_LATE)
    }

    /// The nodes lost at `now`, with how long each was silent: silent for
    /// `lost_after` counted from its last sign of life or from when the backbone began
    /// answering again, whichever is later.
    pub(super) fn lost(&self, now: Instant) -> Vec<(String, Duration)> {
        let Some(healthy) = self.healthy_since.filter(|_| self.backbone_answers(now)) else {
            return Vec::new();
        };
        let mut lost: Vec<(String, Duration)> = self
            .seen
            .iter()
            .filter(|&(_, &seen)| {
                now.saturating_duration_since(seen.max(healthy)) > self.lost_after
            })
            .map(|(n, &seen)| (n.clone(), now.saturating_duration_since(seen)))
            .collect();
        lost.sort();
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock of echoes every 250 ms from `from` for `span`.
    fn echoes(l: &mut Liveness, from: Instant, span: Duration) -> Instant {
        let mut t = from;
        while t < from + span {
            l.echo(t);
            t += ECHO_EVERY;
        }
        t
    }

    #[test]
    fn a_silent_node_on_a_working_backbone_is_lost_after_the_setting() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(4));
        l.seen("edge", t0);
        l.seen("cloud", t0);
        let t = echoes(&mut l, t0, Duration::from_secs(3));
        l.seen("cloud", t);
        assert!(l.lost(t).is_empty());
        let t = echoes(&mut l, t, Duration::from_millis(1500));
        l.seen("cloud", t);
        let lost = l.lost(t);
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert_eq!(lost[0].0, "edge");
        assert!(lost[0].1 > Duration::from_secs(4), "{lost:?}");
        l.forget("edge");
        assert!(l.lost(t).is_empty());
    }

    #[test]
    fn a_stalled_backbone_makes_no_node_lost_and_restarts_the_count() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(4));
        l.seen("edge", t0);
        let t = echoes(&mut l, t0, Duration::from_secs(1));
        // The server stalls for 10 s: no echo, no heartbeat.
        l.silent_backbone();
        let resumed = t + Duration::from_secs(10);
        assert!(
            l.lost(resumed).is_empty(),
            "nothing is lost while it stalls"
        );
        // It answers again: the echo comes back late, and every node gets a whole
        // `lost_after` from then before it is lost.
        l.echo(resumed);
        assert!(l.lost(resumed).is_empty());
        let t = echoes(&mut l, resumed, Duration::from_secs(3));
        assert!(l.lost(t).is_empty());
        let t = echoes(&mut l, t, Duration::from_millis(1500));
        assert_eq!(
            l.lost(t).len(),
            1,
            "still silent 4 s after the backbone came back"
        );
    }

    #[test]
    fn a_control_plane_that_was_not_scheduled_counts_no_silence() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::from_secs(4));
        l.seen("edge", t0);
        let t = echoes(&mut l, t0, Duration::from_secs(1));
        // This process sleeps 6 s (a starved machine), then its next echo comes back.
        let woke = t + Duration::from_secs(6);
        assert!(
            l.lost(woke).is_empty(),
            "the last echo is too old to judge by"
        );
        l.echo(woke);
        assert!(l.lost(woke).is_empty());
    }
}
