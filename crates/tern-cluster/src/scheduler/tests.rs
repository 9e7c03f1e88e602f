use std::collections::BTreeMap;

use super::*;
use crate::manifest;
use crate::model::NodeLoad;

fn node(
    name: &str,
    tier: Tier,
    engine: EngineKind,
    cores: u32,
    memory_mib: u64,
    compute: f64,
) -> NodeDescriptor {
    NodeDescriptor {
        name: name.into(),
        arch: "x86_64".into(),
        tier,
        engine,
        cores,
        memory: memory_mib << 20,
        site: name.into(),
        labels: BTreeMap::new(),
        tee: Tee::None,
        compute_score: compute,
        load: NodeLoad::default(),
        link: None,
        rtt_ms: BTreeMap::new(),
    }
}

/// The default continuum of `tern up`: a cloud, an edge and an IoT node, one site each,
/// with the links' round trips.
fn continuum() -> (Vec<NodeDescriptor>, RttMatrix) {
    let mut cloud = node(
        "cloud",
        Tier::Cloud,
        EngineKind::Cranelift,
        16,
        32 << 10,
        1000.0,
    );
    cloud.labels.insert("region".into(), "eu".into());
    let edge = node("edge", Tier::Edge, EngineKind::Cranelift, 1, 512, 100.0);
    let iot = node("iot", Tier::Iot, EngineKind::Pulley, 1, 128, 5.0);
    let mut rtt = RttMatrix::default();
    rtt.observe("cloud", "edge", 20.0);
    rtt.observe("edge", "iot", 5.0);
    rtt.observe("cloud", "iot", 40.0);
    (vec![cloud, edge, iot], rtt)
}

fn app(extra: &str) -> Manifest {
    manifest::parse(&format!("name = \"app\"\nmodule = \"app.wasm\"\n{extra}"))
        .expect("valid manifest")
}

fn explain(extra: &str) -> Explanation {
    let (nodes, rtt) = continuum();
    let m = app(extra);
    let req = Request::new(&m);
    let e = Scheduler::default().explain(&req, &nodes, &rtt);
    // Placing and explaining are the same decision.
    assert_eq!(
        Scheduler::default()
            .place(&req, &nodes, &rtt)
            .map(|i| nodes[i].name.clone()),
        e.chosen
    );
    e
}

fn rejections<'e>(e: &'e Explanation, node: &str) -> &'e [Rejection] {
    match e.nodes.iter().find(|(n, _)| n == node) {
        Some((_, Verdict::Rejected { rejections })) => rejections,
        other => panic!("{node} was not rejected: {other:?}"),
    }
}

fn eligible(e: &Explanation) -> Vec<&str> {
    e.nodes
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Eligible { .. }))
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn each_filter_keeps_only_the_nodes_that_pass_it() {
    let cases: &[(&str, &[&str])] = &[
        ("[constraints]\ntier = \"edge\"", &["edge"]),
        (
            "[constraints]\ntier = [\"edge\", \"iot\"]",
            &["edge", "iot"],
        ),
        ("[constraints]\nengine = \"pulley\"", &["iot"]),
        ("[constraints]\nlabels = { region = \"eu\" }", &["cloud"]),
        ("[constraints]\nmin_memory = \"1GiB\"", &["cloud"]),
        ("[limits]\nmemory = \"256MiB\"", &["cloud", "edge"]),
        ("near = \"iot\"\nmax_rtt_ms = 10", &["iot", "edge"]),
        ("[constraints]\narch = \"aarch64\"", &[]),
        ("[constraints]\ntee = \"sgx\"", &[]),
    ];
    for (extra, want) in cases {
        let e = explain(extra);
        let mut got = eligible(&e);
        let mut want = want.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "{extra}");
    }
}

#[test]
fn explain_names_every_filter_a_node_failed() {
    let e = explain(
        "near = \"cloud\"\nmax_rtt_ms = 30\n[limits]\nmemory = \"256MiB\"\n[constraints]\ntier = \"cloud\"\nengine = \"cranelift\"\nlabels = { region = \"eu\" }",
    );
    assert_eq!(e.chosen.as_deref(), Some("cloud"));
    let iot: Vec<String> = rejections(&e, "iot")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        iot,
        [
            "tier: is iot, needs cloud",
            "engine: is pulley, needs cranelift",
            "label region: missing, needs eu",
            "free memory: 128 MiB free, the app reserves 256 MiB",
            "latency: 40.0 ms to cloud, at most 30 ms allowed",
        ]
    );
    assert_eq!(rejections(&e, "edge").len(), 2, "{e:?}");
}

#[test]
fn an_unmeasured_link_is_not_taken_for_a_short_one() {
    let (mut nodes, rtt) = continuum();
    nodes.push(node(
        "far",
        Tier::Edge,
        EngineKind::Cranelift,
        4,
        4096,
        400.0,
    ));
    let m = app("near = \"edge\"\nmax_rtt_ms = 50");
    let e = Scheduler::default().explain(&Request::new(&m), &nodes, &rtt);
    assert_eq!(
        rejections(&e, "far"),
        [Rejection::Unmeasured {
            near: "edge".into()
        }]
    );
}

#[test]
fn latency_outweighs_compute_for_an_app_near_its_users() {
    // Without a site to be near, the cloud's cores and room win.
    assert_eq!(explain("").chosen.as_deref(), Some("cloud"));
    // Near the IoT site, the edge (5 ms) beats the cloud (40 ms); the IoT node itself
    // is nearest, but interprets and has almost no room left for 100 MiB.
    let e = explain("near = \"iot\"\n[limits]\nmemory = \"100MiB\"");
    assert_eq!(e.chosen.as_deref(), Some("edge"), "{e:#?}");
    let Some((_, Verdict::Eligible { score })) = e.nodes.first() else {
        panic!()
    };
    assert_eq!(score.latency, Some(1.0 / 1.5));
}

#[test]
fn spread_and_affinity_and_staying_put_are_scored() {
    let (nodes, rtt) = continuum();
    let m = app("replicas = 3\nspread = \"site\"\n[[affinity]]\ntier = \"edge\"\nweight = 100");
    let mut on_sites = HashMap::new();
    on_sites.insert("cloud".to_string(), 1u32);
    let req = Request {
        replicas_by_site: Some(&on_sites),
        current: Some("edge"),
        ..Request::new(&m)
    };
    let e = Scheduler::default().explain(&req, &nodes, &rtt);
    let score = |name: &str| match e.nodes.iter().find(|(n, _)| n == name) {
        Some((_, Verdict::Eligible { score })) => *score,
        other => panic!("{other:?}"),
    };
    assert_eq!(score("cloud").spread, Some(0.5));
    assert_eq!(score("edge").spread, Some(1.0));
    assert_eq!(score("edge").affinity, Some(1.0));
    assert_eq!(score("cloud").affinity, Some(0.5));
    assert_eq!(score("edge").moving, Some(1.0));
    assert_eq!(score("cloud").moving, Some(0.0));
    assert_eq!(e.chosen.as_deref(), Some("edge"));
}

#[test]
fn an_excluded_node_is_never_chosen_and_says_why() {
    let (nodes, rtt) = continuum();
    let m = app("");
    let req = Request {
        exclude: &[("cloud", "draining")],
        ..Request::new(&m)
    };
    let e = Scheduler::default().explain(&req, &nodes, &rtt);
    assert_eq!(
        rejections(&e, "cloud"),
        [Rejection::Excluded {
            why: "draining".into()
        }]
    );
    assert_eq!(e.chosen.as_deref(), Some("edge"));
}

#[test]
fn round_trips_are_smoothed_and_symmetric() {
    let mut rtt = RttMatrix::default();
    rtt.observe("a", "b", 10.0);
    rtt.observe("b", "a", 20.0);
    assert_eq!(rtt.get("a", "b"), Some(13.0));
    assert_eq!(rtt.get("b", "a"), Some(13.0));
    assert_eq!(rtt.get("a", "a"), Some(0.0));
    assert_eq!(rtt.get("a", "c"), None);
    rtt.observe("a", "c", f64::NAN);
    assert_eq!(rtt.get("a", "c"), None);
    // A value smoothed by a node replaces what was there.
    rtt.set("b", "a", 30.0);
    assert_eq!(rtt.get("a", "b"), Some(30.0));
    rtt.set("a", "b", -1.0);
    assert_eq!(rtt.get("a", "b"), Some(30.0));
}

/// With `spread = "site"`, every replica goes to a site that holds the fewest of them,
/// however the scores favour a crowded one: three replicas over three eligible sites
/// land on three sites.
#[test]
fn spread_replicas_fill_every_site_before_doubling_one() {
    let (nodes, rtt) = continuum();
    // Near the edge: latency alone would put every replica there.
    let m = app("replicas = 3\nspread = \"site\"\nnear = \"edge\"");
    let mut on_sites: HashMap<String, u32> = HashMap::new();
    let mut placed = Vec::new();
    for _ in 0..3 {
        let req = Request {
            replicas_by_site: Some(&on_sites),
            ..Request::new(&m)
        };
        let i = Scheduler::default()
            .place(&req, &nodes, &rtt)
            .expect("a node");
        let e = Scheduler::default().explain(&req, &nodes, &rtt);
        assert_eq!(
            e.chosen.as_deref(),
            Some(nodes[i].name.as_str()),
            "place and explain agree"
        );
        *on_sites.entry(nodes[i].site.clone()).or_default() += 1;
        placed.push(nodes[i].site.clone());
    }
    placed.sort();
    placed.dedup();
    assert_eq!(placed.len(), 3, "{placed:?}");
}
