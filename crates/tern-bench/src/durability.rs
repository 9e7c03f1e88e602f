//! What "acknowledged means on disk" costs a checkpoint: the node's store of a
//! checkpoint bundle (`Backbone::put_snapshot`, the object store) on a nats-server that
//! syncs every write before acknowledging it (`sync_interval: always`, as Tern runs
//! it) against one with JetStream's default (acknowledged at once, synced every two
//! minutes), the two interleaved, for bundles of several sizes.

use std::time::{Duration, Instant};

use serde::Serialize;
use tern_cluster::backbone::{Durability, NatsServer};

use crate::stats::{Summary, human};
use crate::table::Table;

/// Bundle sizes measured, in KiB.
const SIZES_KIB: [usize; 3] = [64, 1024, 16 << 10];

/// One size: the store's time on each server.
#[derive(Debug, Clone, Serialize)]
pub struct DurabilityRow {
    pub kib: usize,
    pub synced: Summary,
    pub default: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct DurabilityReport {
    pub rows: Vec<DurabilityRow>,
}

/// Stores `runs` bundles of each size on both servers, one after the other.
///
/// # Errors
/// When a server cannot be started or a store fails.
pub fn run(runs: usize) -> anyhow::Result<DurabilityReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let synced =
            NatsServer::start_with(&dir.path().join("synced"), 0, Durability::Synced).await?;
        let default =
            NatsServer::start_with(&dir.path().join("default"), 0, Durability::Default).await?;
        let (a, b) = (synced.backbone().await?, default.backbone().await?);
        let mut rows = Vec::new();
        for kib in SIZES_KIB {
            let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
            for run in 0..runs {
                // Distinct bytes each time: the object store keeps each under its digest.
                let bundle = dir.path().join(format!("bundle-{kib}-{run}"));
                let bytes: Vec<u8> = (0..kib * 1024)
                    .map(|i| (i as u64 * 2_654_435_761 + run as u64) as u8)
                    .collect();
                std::fs::write(&bundle, &bytes)?;
                for (bb, samples) in [(&a, &mut on_a), (&b, &mut on_b)] {
                    let t = Instant::now();
                    bb.put_snapshot(&bundle).await?;
                    samples.push(t.elapsed());
                }
            }
            let s = |v: &[Duration]| Summary::of(v).ok_or_else(|| anyhow::anyhow!("no samples"));
            rows.push(DurabilityRow {
                kib,
                synced: s(&on_a)?,
                default: s(&on_b)?,
            });
        }
        synced.stop().await;
        default.stop().await;
        Ok(DurabilityReport { rows })
    })
}

impl DurabilityReport {
    /// The table, as Markdown.
    pub fn render(&self) -> String {
        let mut t = Table::new(&[
            "checkpoint bundle",
            "stored, synced (median)",
            "stored, JetStream's default (median)",
            "cost",
        ]);
        for r in &self.rows {
            t.row(vec![
                if r.kib >= 1024 {
                    format!("{} MiB", r.kib / 1024)
                } else {
                    format!("{} KiB", r.kib)
                },
                human(r.synced.median),
                human(r.default.median),
                format!(
                    "{:+.0} %",
                    (r.synced.median / r.default.median - 1.0) * 100.0
                ),
            ]);
        }
        t.markdown()
    }
}
