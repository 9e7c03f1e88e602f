//! The backbone on a real nats-server: node heartbeats that expire, and state that
//! outlives the server.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tern_cluster::backbone::{Backbone, NODE_TTL, NatsServer, NodeEvent};
use tern_cluster::{NodeDescriptor, NodeLoad, Tee, Tier};

fn node(name: &str) -> NodeDescriptor {
    NodeDescriptor {
        name: name.into(),
        arch: std::env::consts::ARCH.into(),
        tier: Tier::Edge,
        engine: Default::default(),
        cores: 1,
        memory: 512 << 20,
        site: "edge".into(),
        labels: BTreeMap::new(),
        tee: Tee::None,
        compute_score: 100.0,
        load: NodeLoad::default(),
        link: None,
        rtt_ms: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_stops_its_heartbeat_is_gone_within_seconds() {
    let state = tempfile::tempdir().expect("tmp");
    let server = NatsServer::start(state.path(), 0)
        .await
        .expect("nats-server starts");
    let bb = server.backbone().await.expect("connects");
    let mut events = bb.watch_nodes().await.expect("watch");
    let edge = node("edge");
    for _ in 0..3 {
        bb.heartbeat(&edge).await.expect("heartbeat");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    match events.next().await {
        Some(Ok(NodeEvent::Up(n))) => assert_eq!(*n, edge),
        other => panic!("expected the node to come up: {other:?}"),
    }
    assert_eq!(
        bb.nodes().await.expect("nodes"),
        std::slice::from_ref(&edge)
    );
    // The last heartbeat went out up to 300 ms ago; the watcher is told of the expiry.
    let silent = Instant::now();
    let gone = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match events.next().await {
                Some(Ok(NodeEvent::Gone(name))) => return name,
                Some(Ok(NodeEvent::Up(_))) => {}
                other => panic!("watch ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the expiry is pushed to the watcher");
    let after = silent.elapsed();
    assert_eq!(gone, "edge");
    assert!(
        after < NODE_TTL + Duration::from_secs(3),
        "noticed after {after:?}"
    );
    eprintln!("node gone {after:?} after its last heartbeat (TTL {NODE_TTL:?})");
    assert!(bb.nodes().await.expect("nodes").is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_and_modules_outlive_the_server() {
    let state = tempfile::tempdir().expect("tmp");
    let wasm = wat::parse_str("(module (func (export \"_start\")))").expect("wat");
    let server = NatsServer::start(state.path(), 0).await.expect("starts");
    let bb = server.backbone().await.expect("connects");
    let record = tern_cluster::apps::AppRecord {
        name: "sensor-agg".into(),
        manifest: "name = \"sensor-agg\"\n".into(),
        module: "0".repeat(64),
        seeds: Vec::new(),
        node: Some("edge".into()),
        incarnation: 1,
        restarts: 0,
        restore: None,
        note: String::new(),
        replica_of: None,
    };
    assert_eq!(bb.put_app(&record, 0).await.expect("put app"), Some(1));
    assert_eq!(
        bb.put_app(&record, 0).await.expect("put app"),
        None,
        "a second deploy of the same name is refused"
    );
    let digest = bb.put_module(&wasm).await.expect("put module");
    server.stop().await;

    let server = NatsServer::start(state.path(), 0).await.expect("restarts");
    let bb = server.backbone().await.expect("reconnects");
    assert_eq!(bb.app("sensor-agg").await.expect("app"), Some((record, 1)));
    assert_eq!(bb.app("absent").await.expect("app"), None);
    assert_eq!(bb.module(&digest).await.expect("module"), wasm);
    let missing = bb
        .module(&"0".repeat(64))
        .await
        .expect_err("no such module");
    assert!(
        missing.to_string().contains("module sha256:000"),
        "{missing}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_backbone_is_one_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let e = tokio::time::timeout(Duration::from_secs(20), Backbone::connect(&url))
        .await
        .expect("gives up in time")
        .expect_err("nothing listens");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot reach NATS at {url}")),
        "{e}"
    );
}
