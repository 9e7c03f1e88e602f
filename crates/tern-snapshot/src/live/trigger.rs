//! [`Trigger`]: how any thread asks a running guest to stop at its next safe point, and
//! how long each request took to be served.

use super::*;

/// Asks a running guest to stop at its next safe point. Cheap to clone; any thread may
/// fire it.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    pub(super) requested: Arc<AtomicBool>,
    flag: Arc<Mutex<Option<RemoteFlag>>>,
    /// Safe points left before firing, when counting (0: not counting).
    pub(super) countdown: Arc<AtomicU64>,
    /// When the pending request was made, and how long each request took to reach a
    /// safe point.
    fired_at: Arc<Mutex<Option<Instant>>>,
    latencies: Arc<Mutex<Vec<std::time::Duration>>>,
}

impl Trigger {
    /// A trigger that has not fired.
    pub fn new() -> Trigger {
        Trigger::default()
    }

    /// A trigger that fires at the `n`-th safe point the guest reaches (loop headers
    /// and WASI calls alike, `n` ≥ 1): a checkpoint at a point that does not depend on
    /// timing, for tests and debugging. The guest polls at every safe point while it
    /// counts, so it runs slower until then.
    pub fn at_safepoint(n: u64) -> Trigger {
        let t = Trigger::default();
        t.countdown.store(n.max(1), Ordering::SeqCst);
        t
    }

    /// Asks for a checkpoint: the guest reaches a safe point within one loop iteration or
    /// at its next WASI call.
    pub fn fire(&self) {
        self.fired_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        self.requested.store(true, Ordering::SeqCst);
        if let Some(flag) = &*self.flag.lock().unwrap_or_else(|p| p.into_inner()) {
            flag.raise();
        }
    }

    /// How long each request so far took to reach a safe point (time to safe point).
    pub fn latencies(&self) -> Vec<std::time::Duration> {
        self.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn reached(&self) {
        if let Some(t) = self
            .fired_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            self.latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(t.elapsed());
        }
    }

    pub(super) fn arm(&self, flag: Option<RemoteFlag>) {
        *self.flag.lock().unwrap_or_else(|p| p.into_inner()) = flag;
        // A request made before the guest started still needs the flag raised, and a
        // counting trigger keeps it raised so that every loop header calls in.
        let wanted =
            self.requested.load(Ordering::SeqCst) || self.countdown.load(Ordering::SeqCst) > 0;
        if wanted && let Some(flag) = &*self.flag.lock().unwrap_or_else(|p| p.into_inner()) {
            flag.raise();
        }
    }
}
