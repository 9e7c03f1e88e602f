//! The guest's monotonic clock across restores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The guest's monotonic clock: host time plus an offset, so it continues from the
/// snapshot's reading after a restore on any machine.
#[derive(Clone)]
pub(super) struct Clock {
    start: Instant,
    offset_ns: Arc<AtomicU64>,
}

impl Clock {
    pub(super) fn new(offset_ns: u64) -> Clock {
        Clock {
            start: Instant::now(),
            offset_ns: Arc::new(AtomicU64::new(offset_ns)),
        }
    }
}

impl wasmtime_wasi::HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.offset_ns
            .load(Ordering::Relaxed)
            .saturating_add(elapsed)
    }
}
