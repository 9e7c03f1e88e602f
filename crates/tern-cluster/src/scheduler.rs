//! Placement: every node goes through the hard filters, and the nodes that pass all of
//! them are scored. The same code places an app and explains the placement: `explain`
//! keeps every filter a node failed and every part of every score, `place` stops at a
//! node's first failed filter and keeps nothing.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use tern_runtime::EngineKind;

use crate::manifest::{AffinityTarget, Manifest};
use crate::model::{NodeDescriptor, Tee, Tier};

/// Round trips between sites in milliseconds, as nodes measure them over the links
/// migrations use, smoothed. Sites are numbered as they are first seen, so a lookup
/// hashes two names and allocates nothing.
#[derive(Debug, Clone, Default)]
pub struct RttMatrix {
    index: HashMap<String, usize>,
    names: Vec<String>,
    /// `ms[a][b]` for `a > b`: each pair once.
    ms: Vec<Vec<Option<f64>>>,
}

/// Weight of a new sample in the smoothed round trip.
const RTT_ALPHA: f64 = 0.3;

impl RttMatrix {
    /// Adds a measured round trip between sites `a` and `b`: the first sample is taken as
    /// it is, later ones are smoothed (exponential moving average, weight 0.3).
    pub fn observe(&mut self, a: &str, b: &str, sample_ms: f64) {
        if !sample_ms.is_finite() || sample_ms < 0.0 {
            return;
        }
        let (a, b) = (self.intern(a), self.intern(b));
        let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
        let v = &mut self.ms[hi][lo];
        *v = Some(match *v {
            Some(old) => (1.0 - RTT_ALPHA) * old + RTT_ALPHA * sample_ms,
            None => sample_ms,
        });
    }

    /// Records a round trip between sites `a` and `b` that is smoothed already (a node's
    /// own average of its pings): it replaces what was there.
    pub fn set(&mut self, a: &str, b: &str, ms: f64) {
        if !ms.is_finite() || ms < 0.0 {
            return;
        }
        let (a, b) = (self.intern(a), self.intern(b));
        let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
        self.ms[hi][lo] = Some(ms);
    }

    fn intern(&mut self, site: &str) -> usize {
        if let Some(&i) = self.index.get(site) {
            return i;
        }
        let i = self.names.len();
        self.names.push(site.to_owned());
        self.index.insert(site.to_owned(), i);
        self.ms.push(vec![None; i + 1]);
        i
    }

    /// The smoothed round trip between `a` and `b`; a site to itself is 0 unless
    /// measured; `None` when never measured.
    pub fn get(&self, a: &str, b: &str) -> Option<f64> {
        self.to_site(b).from(a)
    }

    /// Round trips to `site` from any other, with `site` looked up once.
    fn to_site<'m>(&'m self, site: &'m str) -> ToSite<'m> {
        ToSite {
            matrix: self,
            site,
            index: self.index.get(site).copied(),
        }
    }

    /// Every measured pair, for `tern nodes --latency`.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str, f64)> {
        self.ms.iter().enumerate().flat_map(move |(a, row)| {
            row.iter().enumerate().filter_map(move |(b, v)| {
                v.map(|v| (self.names[a].as_str(), self.names[b].as_str(), v))
            })
        })
    }
}

/// Round trips to one site.
struct ToSite<'m> {
    matrix: &'m RttMatrix,
    site: &'m str,
    index: Option<usize>,
}

impl ToSite<'_> {
    fn from(&self, other: &str) -> Option<f64> {
        let measured = match (self.index, self.matrix.index.get(other)) {
            (Some(a), Some(&b)) => self.matrix.ms[a.max(b)][a.min(b)],
            _ => None,
        };
        match measured {
            None if other == self.site => Some(0.0),
            other => other,
        }
    }
}

/// How much each part of a score counts. A part that does not apply to a deployment
/// (no `near`, one replica, no affinity, nothing to move) is left out of the total.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Weights {
    pub latency: f64,
    pub compute: f64,
    pub capacity: f64,
    pub spread: f64,
    pub affinity: f64,
    pub moving: f64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            latency: 0.35,
            compute: 0.25,
            capacity: 0.2,
            spread: 0.1,
            affinity: 0.1,
            moving: 0.1,
        }
    }
}

/// A hard filter a node failed, with what was wanted and what the node has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum Rejection {
    Arch {
        want: String,
        have: String,
    },
    Tier {
        want: Vec<Tier>,
        have: Tier,
    },
    Engine {
        #[serde(with = "crate::model::engine_name")]
        want: EngineKind,
        #[serde(with = "crate::model::engine_name")]
        have: EngineKind,
    },
    Label {
        key: String,
        want: String,
        have: Option<String>,
    },
    MinMemory {
        want: u64,
        have: u64,
    },
    FreeMemory {
        need: u64,
        free: u64,
    },
    Tee {
        want: Tee,
        have: Tee,
    },
    TooFar {
        near: String,
        rtt_ms: f64,
        max_ms: f64,
    },
    Unmeasured {
        near: String,
    },
    Excluded {
        why: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Arch { want, have } => write!(f, "arch: is {have}, needs {want}"),
            Rejection::Tier { want, have } => {
                let want: Vec<&str> = want.iter().map(|t| t.as_str()).collect();
                write!(f, "tier: is {have}, needs {}", want.join(" or "))
            }
            Rejection::Engine { want, have } => write!(f, "engine: is {have}, needs {want}"),
            Rejection::Label { key, want, have } => match have {
                Some(h) => write!(f, "label {key}: is {h}, needs {want}"),
                None => write!(f, "label {key}: missing, needs {want}"),
            },
            Rejection::MinMemory { want, have } => {
                write!(
                    f,
                    "memory: has {}, needs at least {}",
                    mib(*have),
                    mib(*want)
                )
            }
            Rejection::FreeMemory { need, free } => {
                write!(
                    f,
                    "free memory: {} free, the app reserves {}",
                    mib(*free),
                    mib(*need)
                )
            }
            Rejection::Tee { want, have } => write!(f, "tee: is {have}, needs {want}"),
            Rejection::TooFar {
                near,
                rtt_ms,
                max_ms,
            } => {
                write!(
                    f,
                    "latency: {rtt_ms:.1} ms to {near}, at most {max_ms} ms allowed"
                )
            }
            Rejection::Unmeasured { near } => {
                write!(f, "latency: no round trip to {near} measured yet")
            }
            Rejection::Excluded { why } => f.write_str(why),
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// The parts of an eligible node's score, each 0 to 1 (higher is better), and their
/// weighted mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    /// `1 / (1 + rtt / 10 ms)` to the deployment's `near` site.
    pub latency: Option<f64>,
    /// The node's measured compute score against the best node's, on a log scale:
    /// `ln(1 + score) / ln(1 + best)`.
    pub compute: f64,
    /// Free memory and idle cores left after placing the app, half each.
    pub capacity: f64,
    /// `1 / (1 + replicas already on the node's site)`, with `spread = "site"`.
    pub spread: Option<f64>,
    /// The matched affinity weights over all of them, from 0 (all against) to 1.
    pub affinity: Option<f64>,
    /// 1 on the node an instance is on now, 0 elsewhere, when re-placing a running one.
    pub moving: Option<f64>,
    pub total: f64,
}

/// One node's answer to a deployment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Rejected { rejections: Vec<Rejection> },
    Eligible { score: Score },
}

/// Every node's answer, best first: eligible nodes by score, then rejected ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub nodes: Vec<(String, Verdict)>,
    /// The node chosen, if any passed every filter.
    pub chosen: Option<String>,
}

/// What the scheduler is asked: a deployment, where its replicas are, and for a move,
/// where the instance is now.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub manifest: &'a Manifest,
    /// The node the instance runs on now, when re-placing a running one.
    pub current: Option<&'a str>,
    /// Nodes that must not be chosen, and why (drained, the source of a move).
    pub exclude: &'a [(&'a str, &'a str)],
    /// Replicas of this deployment already placed, by site.
    pub replicas_by_site: Option<&'a HashMap<String, u32>>,
}

impl<'a> Request<'a> {
    /// A fresh placement of `manifest`.
    pub fn new(manifest: &'a Manifest) -> Request<'a> {
        Request {
            manifest,
            current: None,
            exclude: &[],
            replicas_by_site: None,
        }
    }
}

/// With `spread = "site"`, the replicas of the deployment already on `node`'s site: a
/// site with fewer comes first, whatever the scores (the spread part of the score then
/// orders nodes within a site). Without it, 0 for every node.
fn crowding(req: &Request<'_>, node: &NodeDescriptor) -> u32 {
    let m = req.manifest;
    if !(m.spread && m.replicas > 1) {
        return 0;
    }
    req.replicas_by_site
        .and_then(|r| r.get(&node.site))
        .copied()
        .unwrap_or(0)
}

/// Places deployments on nodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scheduler {
    pub weights: Weights,
}

impl Scheduler {
    /// The best node for `req`, by index into `nodes`, or `None` when no node passes
    /// every filter.
    pub fn place(
        &self,
        req: &Request<'_>,
        nodes: &[NodeDescriptor],
        rtt: &RttMatrix,
    ) -> Option<usize> {
        let cx = Context::new(req, nodes, rtt);
        let mut best: Option<(usize, u32, f64)> = None;
        for (i, node) in nodes.iter().enumerate() {
            let Some(rtt_near) = filter(req, node, &cx, None) else {
                continue;
            };
            let total = self.score(req, node, rtt_near, &cx).total;
            let crowd = crowding(req, node);
            // Spread first (a site with fewer replicas), then the score; ties go to
            // the first node in name order, so placement is deterministic.
            let better = match best {
                None => true,
                Some((j, c, t)) => {
                    crowd < c
                        || (crowd == c && (total > t || (total == t && node.name < nodes[j].name)))
                }
            };
            if better {
                best = Some((i, crowd, total));
            }
        }
        best.map(|(i, _, _)| i)
    }

    /// Every node's verdict on `req`: every filter it failed, or every part of its score.
    pub fn explain(
        &self,
        req: &Request<'_>,
        nodes: &[NodeDescriptor],
        rtt: &RttMatrix,
    ) -> Explanation {
        let cx = Context::new(req, nodes, rtt);
        let mut eligible = Vec::new();
        let mut rejected = Vec::new();
        for node in nodes {
            let mut rejections = Vec::new();
            match filter(req, node, &cx, Some(&mut rejections)) {
                Some(rtt_near) if rejections.is_empty() => {
                    let score = self.score(req, node, rtt_near, &cx);
                    eligible.push((node.name.clone(), score, crowding(req, node)));
                }
                _ => rejected.push((node.name.clone(), Verdict::Rejected { rejections })),
            }
        }
        eligible.sort_by(|a, b| {
            a.2.cmp(&b.2)
                .then_with(|| b.1.total.total_cmp(&a.1.total))
                .then_with(|| a.0.cmp(&b.0))
        });
        rejected.sort_by(|a, b| a.0.cmp(&b.0));
        let chosen = eligible.first().map(|(n, _, _)| n.clone());
        let nodes = eligible
            .into_iter()
            .map(|(n, score, _)| (n, Verdict::Eligible { score }))
            .chain(rejected)
            .collect();
        Explanation { nodes, chosen }
    }

    fn score(
        &self,
        req: &Request<'_>,
        node: &NodeDescriptor,
        rtt_near: Option<f64>,
        cx: &Context<'_>,
    ) -> Score {
        let m = req.manifest;
        let w = &self.weights;
        let latency = m.near.as_ref().map(|_| match rtt_near {
            Some(ms) => 1.0 / (1.0 + ms / 10.0),
            None => 0.0,
        });
        // On a log scale: a node ten times slower than the best scores about two
        // thirds, not a tenth, so that a nearer node can outweigh raw speed.
        let compute = if cx.best_compute_ln > 0.0 {
            (node.compute_score.max(0.0).ln_1p() / cx.best_compute_ln).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let free_after = node.free_memory().saturating_sub(m.memory) as f64;
        let memory_left = if node.memory > 0 {
            free_after / node.memory as f64
        } else {
            0.0
        };
        let cores = f64::from(node.cores.max(1));
        let idle = ((cores - node.load.cpu) / cores).clamp(0.0, 1.0);
        let capacity = 0.5 * memory_left + 0.5 * idle;
        let spread = (m.spread && m.replicas > 1).then(|| {
            let here = req
                .replicas_by_site
                .and_then(|r| r.get(&node.site))
                .copied()
                .unwrap_or(0);
            1.0 / (1.0 + f64::from(here))
        });
        let affinity = (!m.affinities.is_empty()).then(|| {
            let all: i32 = m.affinities.iter().map(|a| a.weight.abs()).sum();
            let matched: i32 = m
                .affinities
                .iter()
                .filter(|a| matches(&a.target, node))
                .map(|a| a.weight)
                .sum();
            (f64::from(matched) / f64::from(all.max(1)) + 1.0) / 2.0
        });
        let moving = req.current.map(|c| if c == node.name { 1.0 } else { 0.0 });
        let parts = [
            (latency, w.latency),
            (Some(compute), w.compute),
            (Some(capacity), w.capacity),
            (spread, w.spread),
            (affinity, w.affinity),
            (moving, w.moving),
        ];
        let (sum, weights) = parts
            .iter()
            .filter_map(|(v, w)| v.map(|v| (v * w, *w)))
            .fold((0.0, 0.0), |(s, t), (v, w)| (s + v, t + w));
        Score {
            latency,
            compute,
            capacity,
            spread,
            affinity,
            moving,
            total: if weights > 0.0 { sum / weights } else { 0.0 },
        }
    }
}

/// What one request's scoring shares across nodes.
struct Context<'a> {
    /// `ln(1 + best compute score)` over every node.
    best_compute_ln: f64,
    /// Round trips to the deployment's `near` site.
    near: Option<ToSite<'a>>,
}

impl<'a> Context<'a> {
    fn new(req: &Request<'a>, nodes: &[NodeDescriptor], rtt: &'a RttMatrix) -> Context<'a> {
        let best = nodes.iter().map(|n| n.compute_score).fold(0.0, f64::max);
        Context {
            best_compute_ln: best.max(0.0).ln_1p(),
            near: req.manifest.near.as_ref().map(|n| rtt.to_site(&n.site)),
        }
    }
}

fn matches(target: &AffinityTarget, node: &NodeDescriptor) -> bool {
    match target {
        AffinityTarget::Tier(t) => node.tier == *t,
        AffinityTarget::Site(s) => node.site == *s,
        AffinityTarget::Arch(a) => node.arch == *a,
        AffinityTarget::Label(k, v) => node.labels.get(k) == Some(v),
    }
}

/// Runs the hard filters. With `all`, every failure is recorded; without, the first
/// ends the check. Returns `None` when a filter failed (without `all`), else the round
/// trip to the deployment's `near` site if it was measured.
fn filter(
    req: &Request<'_>,
    node: &NodeDescriptor,
    cx: &Context<'_>,
    mut all: Option<&mut Vec<Rejection>>,
) -> Option<Option<f64>> {
    let m = req.manifest;
    let c = &m.constraints;
    // Records a failure, or ends the check at the first.
    macro_rules! reject {
        ($r:expr) => {
            match all.as_deref_mut() {
                Some(out) => out.push($r),
                None => return None,
            }
        };
    }
    if let Some((_, why)) = req.exclude.iter().find(|(name, _)| *name == node.name) {
        reject!(Rejection::Excluded {
            why: (*why).to_owned()
        });
    }
    if let Some(arch) = &c.arch
        && *arch != node.arch
    {
        reject!(Rejection::Arch {
            want: arch.clone(),
            have: node.arch.clone()
        });
    }
    if !c.tiers.is_empty() && !c.tiers.contains(&node.tier) {
        reject!(Rejection::Tier {
            want: c.tiers.clone(),
            have: node.tier
        });
    }
    if let Some(engine) = c.engine
        && engine != node.engine
    {
        reject!(Rejection::Engine {
            want: engine,
            have: node.engine
        });
    }
    for (key, want) in &c.labels {
        let have = node.labels.get(key);
        if have != Some(want) {
            reject!(Rejection::Label {
                key: key.clone(),
                want: want.clone(),
                have: have.cloned()
            });
        }
    }
    if let Some(tee) = c.tee
        && tee != node.tee
    {
        reject!(Rejection::Tee {
            want: tee,
            have: node.tee
        });
    }
    if node.memory < c.min_memory {
        reject!(Rejection::MinMemory {
            want: c.min_memory,
            have: node.memory
        });
    }
    // The node an instance runs on already holds its reservation.
    let need = if req.current == Some(node.name.as_str()) {
        0
    } else {
        m.memory
    };
    if node.free_memory() < need {
        reject!(Rejection::FreeMemory {
            need,
            free: node.free_memory()
        });
    }
    let rtt_near = cx.near.as_ref().and_then(|n| n.from(&node.site));
    if let Some(near) = &m.near
        && let Some(max) = near.max_rtt_ms
    {
        match rtt_near {
            Some(ms) if ms > max => reject!(Rejection::TooFar {
                near: near.site.clone(),
                rtt_ms: ms,
                max_ms: max
            }),
            None => reject!(Rejection::Unmeasured {
                near: near.site.clone()
            }),
            _ => {}
        }
    }
    Some(rtt_near)
}

#[cfg(test)]
mod tests;
