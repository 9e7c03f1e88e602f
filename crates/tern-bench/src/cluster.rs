//! `tern bench cluster`: how fast the scheduler places apps on a large simulated
//! continuum, and how long one `explain` over every node takes.
//!
//! The continuum is generated from a fixed seed: nodes of three tiers over sites, with
//! labels, engines, memory and measured compute scores of each tier's range, and round
//! trips between sites. The apps mix every kind of constraint and preference a manifest
//! can hold. Each app is placed in turn, and its memory reserved on the chosen node, so
//! later apps see the load of earlier ones, as in a real deployment wave.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_cluster::manifest::{Affinity, AffinityTarget, Constraints, Manifest, ModuleRef, Near};
use tern_cluster::{NodeDescriptor, NodeLoad, Request, RttMatrix, Scheduler, Tee, Tier};
use tern_runtime::EngineKind;

use crate::stats::{Summary, human};
use crate::table::Table;

/// What to simulate.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub apps: usize,
    pub sites: usize,
    pub runs: usize,
}

/// The measured placement wave and explanations.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub nodes: usize,
    pub apps: usize,
    pub sites: usize,
    /// Time to place every app, per run.
    pub wave: Summary,
    /// Apps placed and apps no node could take, in the last run.
    pub placed: usize,
    pub unplaced: usize,
    /// One `explain` of one app over every node.
    pub explain: Summary,
}

/// A small deterministic generator (xorshift64*): the benchmark needs the same
/// continuum every run, not good randomness, so no crate is pulled in for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn continuum(o: &ClusterOptions, rng: &mut Rng) -> (Vec<NodeDescriptor>, RttMatrix) {
    let site = |i: usize| format!("site-{i}");
    let mut nodes = Vec::with_capacity(o.nodes);
    for i in 0..o.nodes {
        let tier = Tier::ALL[i % 3];
        let (cores, memory_mib, compute) = match tier {
            Tier::Cloud => (32, 65536, 2000.0),
            Tier::Edge => (4, 4096, 300.0),
            Tier::Iot => (1, 256, 10.0),
        };
        let mut labels = BTreeMap::new();
        labels.insert("region".into(), ["eu", "us", "ap"][rng.below(3)].into());
        if rng.below(4) == 0 {
            labels.insert("disk".into(), "ssd".into());
        }
        nodes.push(NodeDescriptor {
            name: format!("node-{i:05}"),
            arch: if rng.below(5) == 0 {
                "aarch64"
            } else {
                "x86_64"
            }
            .into(),
            tier,
            engine: if tier == Tier::Iot {
                EngineKind::Pulley
            } else {
                EngineKind::Cranelift
            },
            cores,
            memory: memory_mib << 20,
            site: site(rng.below(o.sites)),
            labels,
            tee: Tee::None,
            compute_score: compute * (0.5 + rng.below(100) as f64 / 100.0),
            load: NodeLoad::default(),
            link: None,
            rtt_ms: BTreeMap::new(),
        });
    }
    let mut rtt = RttMatrix::default();
    for a in 0..o.sites {
        for b in a + 1..o.sites {
            rtt.observe(&site(a), &site(b), 1.0 + rng.below(80) as f64);
        }
    }
    (nodes, rtt)
}

fn app(i: usize, o: &ClusterOptions, rng: &mut Rng) -> Manifest {
    let mut constraints = Constraints::default();
    match i % 5 {
        0 => constraints.tiers = vec![Tier::Edge, Tier::Cloud],
        1 => {
            constraints.labels.insert("region".into(), "eu".into());
        }
        2 => constraints.arch = Some("x86_64".into()),
        3 => constraints.min_memory = 1 << 30,
        _ => {}
    }
    let near = i.is_multiple_of(2).then(|| Near {
        site: format!("site-{}", rng.below(o.sites)),
        max_rtt_ms: i.is_multiple_of(4).then_some(50.0),
    });
    let affinities = if i.is_multiple_of(3) {
        vec![Affinity {
            target: AffinityTarget::Label("disk".into(), "ssd".into()),
            weight: 40,
        }]
    } else {
        Vec::new()
    };
    Manifest {
        name: format!("app-{i}"),
        module: ModuleRef::Digest("0".repeat(64)),
        args: Vec::new(),
        env: BTreeMap::new(),
        volumes: Vec::new(),
        memory: (16 + 16 * rng.below(8) as u64) << 20,
        constraints,
        affinities,
        near,
        migratable: i % 2 == 1,
        checkpoint_every: None,
        replicas: 1,
        spread: false,
        signed_by: Vec::new(),
    }
}

/// Runs the benchmark.
pub fn run(o: &ClusterOptions) -> ClusterReport {
    let scheduler = Scheduler::default();
    let mut rng = Rng(0x7e57_c0de_5eed_0001);
    let (fresh, rtt) = continuum(o, &mut rng);
    let apps: Vec<Manifest> = (0..o.apps).map(|i| app(i, o, &mut rng)).collect();
    let mut waves = Vec::new();
    let (mut placed, mut unplaced) = (0, 0);
    for _ in 0..o.runs {
        let mut nodes = fresh.clone();
        let mut by_app: HashMap<usize, usize> = HashMap::with_capacity(apps.len());
        let start = Instant::now();
        for (i, m) in apps.iter().enumerate() {
            if let Some(n) = scheduler.place(&Request::new(m), &nodes, &rtt) {
                nodes[n].load.memory += m.memory;
                nodes[n].load.instances += 1;
                by_app.insert(i, n);
            }
        }
        waves.push(start.elapsed());
        placed = by_app.len();
        unplaced = apps.len() - placed;
    }
    let mut explains = Vec::new();
    for m in apps.iter().take(20) {
        let start = Instant::now();
        let e = scheduler.explain(&Request::new(m), &fresh, &rtt);
        explains.push(start.elapsed());
        std::hint::black_box(e);
    }
    ClusterReport {
        nodes: o.nodes,
        apps: o.apps,
        sites: o.sites,
        wave: Summary::of(&waves).unwrap_or_else(zero),
        placed,
        unplaced,
        explain: Summary::of(&explains).unwrap_or_else(zero),
    }
}

fn zero() -> Summary {
    Summary::of(&[Duration::ZERO]).expect("one sample")
}

impl ClusterReport {
    /// The report as a table.
    pub fn render(&self) -> String {
        let mut t = Table::new(&["measurement", "median", "p90", "target"]);
        t.row(vec![
            format!(
                "place {} apps on {} nodes ({} sites)",
                self.apps, self.nodes, self.sites
            ),
            human(self.wave.median),
            human(self.wave.p90),
            "≤ 1 s".into(),
        ]);
        t.row(vec![
            "placements per second".into(),
            format!("{:.0}", self.apps as f64 / self.wave.median.max(1e-9)),
            String::new(),
            String::new(),
        ]);
        t.row(vec![
            format!("explain one app over {} nodes", self.nodes),
            human(self.explain.median),
            human(self.explain.p90),
            String::new(),
        ]);
        format!(
            "{}\n{} apps placed, {} found no node that passes their filters\n",
            t.markdown(),
            self.placed,
            self.unplaced
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small wave places every app that some node can take, and the same apps every
    /// run (the continuum comes from a fixed seed).
    #[test]
    fn a_small_wave_places_apps_deterministically() {
        let o = ClusterOptions {
            nodes: 30,
            apps: 200,
            sites: 4,
            runs: 2,
        };
        let a = run(&o);
        let b = run(&o);
        assert_eq!((a.placed, a.unplaced), (b.placed, b.unplaced));
        assert_eq!(a.placed + a.unplaced, 200);
        assert!(a.placed > 100, "{}", a.render());
    }
}
