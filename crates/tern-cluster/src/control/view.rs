//! The control plane's view of the continuum, rebuilt from the backbone's watches, and
//! the one scheduling input every verb places against.
//!
//! Reservations (the memory and instance count the apps placed on a node hold) are
//! kept up to date as records, statuses and removals arrive, not recomputed: each app
//! reserves its memory on the node its record names until its incarnation ends.
//! [`View::candidates`] hands out the nodes with those reservations, and the nodes
//! placements must leave out (drained ones), so that `plan`, `deploy`, `explain`,
//! recovery, `migrate` and `drain` all see the same continuum.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::Settings;
use super::liveness::Liveness;
use crate::apps::{AppRecord, InstanceStatus};
use crate::manifest;
use crate::model::{InstanceState, NodeDescriptor};
use crate::moves::MoveRecord;
use crate::scheduler::RttMatrix;

/// An app as the view holds it: its record, the record's revision, and the memory its
/// manifest reserves.
#[derive(Debug, Clone)]
pub(super) struct Placed {
    pub record: AppRecord,
    pub rev: u64,
    pub memory: u64,
}

/// What the apps placed on one node reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reserved {
    apps: u32,
    memory: u64,
}

/// The nodes as the registry and their heartbeats say they are, the round trips
/// between their sites, the apps and what they reserve.
#[derive(Debug)]
pub(super) struct View {
    pub nodes: BTreeMap<String, NodeDescriptor>,
    pub rtt: RttMatrix,
    apps: BTreeMap<String, Placed>,
    /// Each app's latest status (of its latest incarnation).
    statuses: HashMap<String, InstanceStatus>,
    /// Nodes no app is placed on (`tern drain`).
    pub drained: BTreeSet<String>,
    /// Which nodes are alive.
    pub liveness: Liveness,
    /// By node.
    reserved: HashMap<String, Reserved>,
    /// Each app's latest move, and its revision.
    moves: HashMap<String, (MoveRecord, u64)>,
    /// Nodes chosen for apps whose records (or moves) do not name them yet, by app:
    /// counted like reservations, so that placements made at once (a lost node's apps)
    /// do not all take the same room. A claim ends when the record or move that names
    /// its node arrives, or after [`CLAIM_FOR`].
    claims: HashMap<String, Claim>,
    /// The last two checkpoints each app's statuses named, newest first.
    kept: HashMap<String, [Option<String>; 2]>,
}

/// A node chosen for an app, not yet written.
#[derive(Debug, Clone)]
struct Claim {
    node: String,
    memory: u64,
    at: std::time::Instant,
}

/// How long a claim counts without the write that ends it (a write that failed).
const CLAIM_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// What a placement is made against: every node with the reservations of the apps on
/// it (but the one being placed), and the nodes it must leave out, with why.
#[derive(Debug, Clone)]
pub(super) struct Candidates {
    pub nodes: Vec<NodeDescriptor>,
    pub excluded: Vec<(String, &'static str)>,
}

impl Candidates {
    /// The nodes to leave out, as [`crate::scheduler::Request::exclude`] takes them.
    pub fn excluded(&self) -> Vec<(&str, &str)> {
        exclusions(&self.excluded)
    }

    /// The best node for `req` (whose `exclude` must be this one's), or one line
    /// naming why each node was refused.
    pub fn choose(
        &self,
        scheduler: &crate::scheduler::Scheduler,
        req: &crate::scheduler::Request<'_>,
        rtt: &RttMatrix,
        name: &str,
    ) -> Result<String, String> {
        match scheduler.place(req, &self.nodes, rtt) {
            Some(i) => Ok(self.nodes[i].name.clone()),
            None => Err(super::apps::no_node(
                name,
                &scheduler.explain(req, &self.nodes, rtt),
            )),
        }
    }
}

/// `excluded` as [`crate::scheduler::Request::exclude`] takes it.
pub(super) fn exclusions<'a>(
    excluded: &'a [(String, &'static str)],
) -> Vec<(&'a str, &'static str)> {
    excluded.iter().map(|(n, why)| (n.as_str(), *why)).collect()
}

impl View {
    pub fn new(settings: Settings) -> View {
        View {
            nodes: BTreeMap::new(),
            rtt: RttMatrix::default(),
            apps: BTreeMap::new(),
            statuses: HashMap::new(),
            drained: BTreeSet::new(),
            liveness: Liveness::new(settings.lost_after),
            reserved: HashMap::new(),
            moves: HashMap::new(),
            claims: HashMap::new(),
            kept: HashMap::new(),
        }
    }

    /// Counts `node` as taken by `app` (its `memory`) until the app's record or move
    /// names it: call it with the lock that chose the node still held.
    pub fn claim(&mut self, app: &str, node: &str, memory: u64) {
        if self.claims.len() > 1024 {
            self.claims.retain(|_, c| c.at.elapsed() < CLAIM_FOR);
        }
        self.claims.insert(
            app.to_owned(),
            Claim {
                node: node.to_owned(),
                memory,
                at: std::time::Instant::now(),
            },
        );
    }

    /// Ends `app`'s claim: the write it was for failed.
    pub fn release(&mut self, app: &str) {
        self.claims.remove(app);
    }

    /// Ends `app`'s claim if it is on `node` (what the claim was for has arrived).
    fn settle(&mut self, app: &str, node: Option<&str>) {
        if self
            .claims
            .get(app)
            .is_some_and(|c| node.is_none_or(|n| c.node == n))
        {
            self.claims.remove(app);
        }
    }

    /// Takes `mv` at revision `rev` (an older revision changes nothing).
    pub fn put_move(&mut self, mv: MoveRecord, rev: u64) {
        if self.moves.get(&mv.app).is_some_and(|(_, r)| *r >= rev) {
            return;
        }
        if mv.live
            && let Some(to) = &mv.to
        {
            self.settle(&mv.app, Some(to));
        }
        self.moves.insert(mv.app.clone(), (mv, rev));
    }

    /// Forgets the moves of app `app`.
    pub fn forget_moves(&mut self, app: &str) {
        self.moves.remove(app);
    }

    /// The moves under way, oldest first.
    pub fn moves_in_flight(&self) -> impl Iterator<Item = (&MoveRecord, u64)> {
        let mut v: Vec<(&MoveRecord, u64)> = self
            .moves
            .values()
            .filter(|(m, _)| !m.state.is_over())
            .map(|(m, r)| (m, *r))
            .collect();
        v.sort_by_key(|(m, _)| m.asked_ms);
        v.into_iter()
    }

    /// App `app`'s move under way, if any.
    pub fn moving(&self, app: &str) -> Option<&MoveRecord> {
        self.moves
            .get(app)
            .map(|(m, _)| m)
            .filter(|m| !m.state.is_over())
    }

    /// App `app`'s latest move, over or not.
    pub fn last_move(&self, app: &str) -> Option<&MoveRecord> {
        self.moves.get(app).map(|(m, _)| m)
    }

    /// App `name`, if the view holds it.
    pub fn app(&self, name: &str) -> Option<&Placed> {
        self.apps.get(name)
    }

    /// Every app, by name.
    pub fn apps(&self) -> impl Iterator<Item = &Placed> {
        self.apps.values()
    }

    /// The latest status of `app`, if any was reported.
    pub fn status(&self, app: &str) -> Option<&InstanceStatus> {
        self.statuses.get(app)
    }

    /// Whether the incarnation `record` names has ended (exited or failed).
    pub fn has_ended(&self, record: &AppRecord) -> bool {
        self.statuses.get(&record.name).is_some_and(|s| {
            s.incarnation == record.incarnation
                && matches!(
                    s.state,
                    InstanceState::Exited { .. } | InstanceState::Failed { .. }
                )
        })
    }

    /// Takes `record` at revision `rev` (from the watch, or a write of this control
    /// plane's own, whichever comes first: an older revision changes nothing).
    pub fn put_app(&mut self, record: AppRecord, rev: u64) {
        if self.apps.get(&record.name).is_some_and(|p| p.rev >= rev) {
            return;
        }
        self.unreserve(&record.name);
        self.settle(&record.name, record.node.as_deref());
        let memory =
            manifest::parse(&record.manifest).map_or(manifest::DEFAULT_MEMORY, |m| m.memory);
        let name = record.name.clone();
        self.apps.insert(
            name.clone(),
            Placed {
                record,
                rev,
                memory,
            },
        );
        self.reserve(&name);
    }

    /// Forgets app `name`.
    pub fn remove_app(&mut self, name: &str) {
        self.unreserve(name);
        self.settle(name, None);
        self.apps.remove(name);
        self.kept.remove(name);
    }

    /// The checkpoints something may still restore from: each app's last two, and the
    /// one each record restores from.
    pub fn kept_checkpoints(&self) -> HashSet<String> {
        let kept = self.kept.values().flatten().flatten().cloned();
        let restores = self
            .apps
            .values()
            .filter_map(|p| p.record.restore.as_ref().map(|c| c.digest.clone()));
        kept.chain(restores).collect()
    }

    /// Takes a status: an app whose incarnation ended reserves nothing any more.
    pub fn put_status(&mut self, status: InstanceStatus) {
        if self
            .statuses
            .get(&status.app)
            .is_some_and(|old| old.incarnation > status.incarnation)
        {
            return;
        }
        let app = status.app.clone();
        if let Some(c) = &status.checkpoint {
            let kept = self.kept.entry(app.clone()).or_default();
            if kept[0].as_deref() != Some(c.digest.as_str()) {
                kept[1] = kept[0].replace(c.digest.clone());
            }
        }
        self.unreserve(&app);
        self.statuses.insert(app.clone(), status);
        self.reserve(&app);
    }

    /// What `name` reserves now, and where: nothing once its incarnation has ended.
    fn reservation(&self, name: &str) -> Option<(String, u64)> {
        let p = self.apps.get(name)?;
        let node = p.record.node.clone()?;
        (!self.has_ended(&p.record)).then_some((node, p.memory))
    }

    fn reserve(&mut self, name: &str) {
        if let Some((node, memory)) = self.reservation(name) {
            let r = self.reserved.entry(node).or_default();
            r.apps += 1;
            r.memory += memory;
        }
    }

    fn unreserve(&mut self, name: &str) {
        if let Some((node, memory)) = self.reservation(name)
            && let Some(r) = self.reserved.get_mut(&node)
        {
            r.apps = r.apps.saturating_sub(1);
            r.memory = r.memory.saturating_sub(memory);
        }
    }

    /// The one scheduling input: every node, its memory and instances counted from the
    /// reservations of the apps placed on it and of the live moves on their way to it
    /// (leaving out `placing`, the app being placed, whose own reservation is not a
    /// cost of placing it), and the drained nodes to leave out.
    pub fn candidates(&self, placing: Option<&str>) -> Candidates {
        let own = placing.and_then(|a| self.reservation(a));
        // What live moves bring to each node, in one pass over the moves (not one per
        // node: a lost node's thousands of restarts are moves in flight too).
        let mut arriving: HashMap<&str, Reserved> = HashMap::new();
        for (m, _) in self.moves_in_flight() {
            if let (true, Some(to), Some(p)) = (
                m.live && Some(m.app.as_str()) != placing,
                m.to.as_deref(),
                self.apps.get(&m.app),
            ) {
                let r = arriving.entry(to).or_default();
                r.apps += 1;
                r.memory += p.memory;
            }
        }
        for (app, c) in &self.claims {
            if Some(app.as_str()) != placing && c.at.elapsed() < CLAIM_FOR {
                let r = arriving.entry(c.node.as_str()).or_default();
                r.apps += 1;
                r.memory += c.memory;
            }
        }
        let nodes = self
            .nodes
            .values()
            .map(|n| {
                let mut n = n.clone();
                let mut r = self.reserved.get(&n.name).copied().unwrap_or_default();
                if let Some((node, memory)) = &own
                    && *node == n.name
                {
                    r.apps = r.apps.saturating_sub(1);
                    r.memory = r.memory.saturating_sub(*memory);
                }
                let a = arriving.get(n.name.as_str()).copied().unwrap_or_default();
                n.load.memory = r.memory + a.memory;
                n.load.instances = r.apps + a.apps;
                n
            })
            .collect();
        Candidates {
            nodes,
            excluded: self
                .drained
                .iter()
                .map(|n| (n.clone(), "drained"))
                .collect(),
        }
    }

    /// The apps whose current incarnation is placed on `node` and has not ended.
    pub fn apps_on(&self, node: &str) -> Vec<(AppRecord, u64)> {
        self.apps
            .values()
            .filter(|p| p.record.node.as_deref() == Some(node) && !self.has_ended(&p.record))
            .map(|p| (p.record.clone(), p.rev))
            .collect()
    }

    /// The site of node `name`, if it is in the view.
    pub fn site_of(&self, name: &str) -> Option<String> {
        self.nodes.get(name).map(|n| n.site.clone())
    }

    /// The reservations recomputed from every app: what [`View::candidates`] must
    /// always agree with (for tests).
    #[cfg(test)]
    fn recomputed(&self) -> HashMap<String, Reserved> {
        let mut out: HashMap<String, Reserved> = HashMap::new();
        for name in self.apps.keys() {
            if let Some((node, memory)) = self.reservation(name) {
                let r = out.entry(node).or_default();
                r.apps += 1;
                r.memory += memory;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeLoad, Tee, Tier};

    fn node(name: &str) -> NodeDescriptor {
        NodeDescriptor {
            name: name.into(),
            arch: std::env::consts::ARCH.into(),
            tier: Tier::Edge,
            engine: Default::default(),
            cores: 1,
            memory: 1 << 30,
            site: name.into(),
            labels: BTreeMap::new(),
            tee: Tee::None,
            compute_score: 100.0,
            load: NodeLoad::default(),
            link: None,
            rtt_ms: BTreeMap::new(),
        }
    }

    fn record(name: &str, node: &str, incarnation: u64, mib: u64) -> AppRecord {
        AppRecord {
            name: name.into(),
            manifest: format!(
                "name = \"{name}\"\nmodule = \"sha256:{}\"\n[limits]\nmemory = \"{mib}MiB\"\n",
                "0".repeat(64)
            ),
            module: "0".repeat(64),
            seeds: Vec::new(),
            node: Some(node.into()),
            incarnation,
            restarts: 0,
            restore: None,
            note: String::new(),
            replica_of: None,
            signatures: None,
        }
    }

    fn ended(app: &str, node: &str, incarnation: u64) -> InstanceStatus {
        InstanceStatus {
            app: app.into(),
            node: node.into(),
            incarnation,
            state: InstanceState::Exited { code: 0 },
            restarts: 0,
            checkpoint: None,
            note: String::new(),
            updated_ms: 0,
        }
    }

    fn load(v: &View, placing: Option<&str>, node: &str) -> (u32, u64) {
        let c = v.candidates(placing);
        let n = c.nodes.iter().find(|n| n.name == node).expect("node");
        (n.load.instances, n.load.memory >> 20)
    }

    /// A node chosen but not yet written counts for the next placement, until the
    /// record that names it arrives (then it counts once, as a reservation) or the
    /// write fails.
    #[test]
    fn a_claim_counts_until_its_record_arrives_or_is_released() {
        let mut v = View::new(Settings::default());
        v.nodes.insert("a".into(), node("a"));
        v.claim("x", "a", 64 << 20);
        assert_eq!(load(&v, None, "a"), (1, 64));
        assert_eq!(load(&v, Some("x"), "a"), (0, 0), "not against itself");
        v.put_app(record("x", "a", 1, 64), 1);
        assert_eq!(load(&v, None, "a"), (1, 64), "counted once");
        v.claim("y", "a", 32 << 20);
        assert_eq!(load(&v, None, "a"), (2, 96));
        v.release("y");
        assert_eq!(load(&v, None, "a"), (1, 64));
    }

    /// Reservations follow records, moves, ends and removals as they come, and always
    /// equal what recomputing them from every app gives.
    #[test]
    fn reservations_follow_every_change_and_equal_a_recount() {
        let mut v = View::new(Settings::default());
        v.nodes.insert("a".into(), node("a"));
        v.nodes.insert("b".into(), node("b"));
        v.put_app(record("x", "a", 1, 64), 1);
        v.put_app(record("y", "a", 1, 32), 2);
        assert_eq!(load(&v, None, "a"), (2, 96));
        // Placing x again: its own reservation is not a cost.
        assert_eq!(load(&v, Some("x"), "a"), (1, 32));
        assert_eq!(load(&v, Some("x"), "b"), (0, 0));
        // A late copy of an older revision changes nothing.
        v.put_app(record("x", "b", 1, 64), 1);
        assert_eq!(load(&v, None, "a"), (2, 96));
        // x moves to b.
        v.put_app(record("x", "b", 2, 64), 3);
        assert_eq!(
            (load(&v, None, "a"), load(&v, None, "b")),
            ((1, 32), (1, 64))
        );
        // y ends; a status of x's old incarnation changes nothing.
        v.put_status(ended("y", "a", 1));
        v.put_status(ended("x", "a", 1));
        assert_eq!(
            (load(&v, None, "a"), load(&v, None, "b")),
            ((0, 0), (1, 64))
        );
        assert_eq!(v.apps_on("b").len(), 1);
        assert!(v.apps_on("a").is_empty());
        v.remove_app("x");
        assert_eq!(load(&v, None, "b"), (0, 0));
        assert_eq!(
            v.reserved
                .iter()
                .filter(|(_, r)| **r != Reserved::default())
                .count(),
            0
        );
        assert_eq!(
            v.recomputed()
                .into_iter()
                .filter(|(_, r)| *r != Reserved::default())
                .count(),
            0
        );
    }

    #[test]
    fn drained_nodes_are_left_out_with_their_reason() {
        let mut v = View::new(Settings::default());
        v.nodes.insert("a".into(), node("a"));
        v.drained.insert("a".into());
        assert_eq!(v.candidates(None).excluded(), vec![("a", "drained")]);
    }
}
