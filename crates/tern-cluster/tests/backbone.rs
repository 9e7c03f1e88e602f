//! The backbone on a real nats-server: the node registry and heartbeats, and state that
//! outlives the server.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use tern_cluster::backbone::{Backbone, NatsServer, NodeEvent};
use tern_cluster::model::Heartbeat;
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
async fn the_registry_holds_a_node_until_it_leaves_and_heartbeats_reach_listeners() {
    let state = tempfile::tempdir().expect("tmp");
    let server = NatsServer::start(state.path(), 0)
        .await
        .expect("nats-server starts");
    let bb = server.backbone().await.expect("connects");
    let mut events = bb.watch_nodes().await.expect("watch");
    let mut beats = Box::pin(bb.heartbeats().await.expect("subscribe"));
    let mut edge = node("edge");
    edge.load.instances = 3;
    edge.rtt_ms.insert("cloud".into(), 20.0);
    bb.register(&edge).await.expect("register");
    // The registry keeps what the node is, not its load or round trips.
    let registered = NodeDescriptor {
        load: NodeLoad::default(),
        rtt_ms: BTreeMap::new(),
        ..edge.clone()
    };
    match events.next().await {
        Some(Ok(NodeEvent::Up(n))) => assert_eq!(*n, registered),
        other => panic!("expected the node to come up: {other:?}"),
    }
    let beat = Heartbeat {
        name: "edge".into(),
        load: edge.load,
        rtt_ms: edge.rtt_ms.clone(),
    };
    bb.beat(&beat).await.expect("beat");
    // Garbage on a heartbeat subject, or a heartbeat under another node's name, is
    // skipped.
    bb.client
        .publish(
            tern_cluster::protocol::alive_subject("edge"),
            "not json".into(),
        )
        .await
        .expect("publish");
    let forged = Heartbeat {
        name: "cloud".into(),
        ..beat.clone()
    };
    bb.client
        .publish(
            tern_cluster::protocol::alive_subject("edge"),
            serde_json::to_vec(&forged).expect("json").into(),
        )
        .await
        .expect("publish");
    bb.beat(&beat).await.expect("beat");
    for _ in 0..2 {
        let got = tokio::time::timeout(Duration::from_secs(10), beats.next())
            .await
            .expect("a heartbeat in time")
            .expect("the subscription goes on");
        assert_eq!(got, beat);
    }
    // Silence does not remove a node: that is the control plane's decision.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        bb.nodes().await.expect("nodes"),
        std::slice::from_ref(&registered)
    );
    bb.leave("edge").await.expect("leave");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.next()).await {
            Ok(Some(Ok(NodeEvent::Gone(name)))) => {
                assert_eq!(name, "edge");
                break;
            }
            Ok(Some(Ok(NodeEvent::Up(_)))) => {}
            other => panic!("expected the node to leave: {other:?}"),
        }
    }
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
        signatures: None,
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

/// An app's stdout is fenced: a chunk is stored only after the message its writer
/// expects, so a writer of an older incarnation learns it lost the app. A retry of a
/// chunk that was stored (its acknowledgement lost) is a conflict too, and the last
/// message then shows the writer its own chunk, stored once: it goes on after it.
#[tokio::test(flavor = "multi_thread")]
async fn output_is_fenced_by_the_last_message_and_a_retry_is_not_a_conflict() {
    use tern_cluster::apps::{LogId, Published};
    let state = tempfile::tempdir().expect("tmp");
    let server = NatsServer::start(state.path(), 0).await.expect("starts");
    let bb = server.backbone().await.expect("connects");
    let first = bb
        .publish_log("app", 1, LogId::Out(0), Some(0), Some(0), b"one\n".to_vec())
        .await;
    let Published::Stored(s1) = first else {
        panic!("{first:?}")
    };
    // The same chunk again, as a retry sends it: the stream has it already, once.
    let again = bb
        .publish_log("app", 1, LogId::Out(0), Some(0), Some(0), b"one\n".to_vec())
        .await;
    assert_eq!(again, Published::Conflict);
    let last = bb.last_output("app").await.expect("last");
    assert_eq!((last.seq, last.incarnation, last.offset), (s1, 1, 4));
    // Incarnation 2 takes over after it.
    let second = bb
        .publish_log(
            "app",
            2,
            LogId::Out(4),
            Some(4),
            Some(s1),
            b"two\n".to_vec(),
        )
        .await;
    let Published::Stored(s2) = second else {
        panic!("{second:?}")
    };
    // Incarnation 1, which still thinks s1 is the last, is refused, and learns why.
    let stale = bb
        .publish_log(
            "app",
            1,
            LogId::Out(4),
            Some(4),
            Some(s1),
            b"old\n".to_vec(),
        )
        .await;
    assert_eq!(stale, Published::Conflict);
    let last = bb.last_output("app").await.expect("last");
    assert_eq!((last.seq, last.incarnation, last.offset), (s2, 2, 8));
    let chunks = bb.logs("app", 0, 1 << 20).await.expect("logs");
    let out: Vec<u8> = chunks.into_iter().flat_map(|c| c.bytes).collect();
    assert_eq!(out, b"one\ntwo\n");
    server.stop().await;
}
