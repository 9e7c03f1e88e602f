//! `tern node` against a real nats-server: a node joins with what it measured, a node
//! killed is declared lost by the control plane once it has been silent for
//! `--lost-after`, a node stopped leaves at once, and bad flags or an unreachable
//! backbone are one clear line.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tern_cluster::Tier;
use tern_cluster::backbone::{NatsServer, NodeEvent};

use crate::support::{Running, free_addr, scratch, signal, spawn_node, tern};

/// Waits for the next event about `name`, up to `within`.
async fn next_about(
    events: &mut (
             impl futures_util::Stream<Item = Result<NodeEvent, tern_cluster::backbone::BackboneError>>
             + Unpin
         ),
    within: Duration,
) -> NodeEvent {
    tokio::time::timeout(within, events.next())
        .await
        .expect("an event in time")
        .expect("the watch goes on")
        .expect("a node event")
}

/// Credentials for node `name` that another continuum's authority signed, in
/// `dir/NAME.creds`.
fn stranger_credentials(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let (seed, user) = tern_trust::nats::new_user().expect("user");
    let jwt = tern_trust::nats::Authority::generate()
        .user_jwt(name, &user, &tern_cluster::protocol::node_rights(name))
        .expect("jwt");
    let file = dir.join(format!("{name}.creds"));
    std::fs::write(&file, tern_trust::nats::credentials(&jwt, &seed)).expect("write");
    file
}

/// A nats-server in `dir` and a connection to its backbone.
async fn backbone(dir: &std::path::Path) -> (NatsServer, tern_cluster::backbone::Backbone) {
    let server = NatsServer::start(&dir.join("nats"), 0)
        .await
        .expect("nats-server starts");
    let bb = server.backbone().await.expect("connects");
    (server, bb)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_joins_measured_and_is_declared_lost_seconds_after_a_kill() {
    let d = scratch();
    let (server, bb) = backbone(d.path()).await;
    let mut events = Box::pin(bb.watch_nodes().await.expect("watch"));
    let lost_after = Duration::from_secs(2);
    let _controller = Running(
        tern(d.path())
            .env(
                "TERN_CREDS",
                &server.control_credentials_file().display().to_string(),
            )
            .env("TERN_CA", &server.ca_file().display().to_string())
            .args([
                "controller",
                "--nats",
                server.url(),
                "--listen",
                &free_addr(),
            ])
            .args(["--lost-after", "2s"])
            .spawn_logged(&d.path().join("controller.log")),
    );
    let mut node = spawn_node(
        d.path(),
        &server,
        "edge-1",
        &[
            "--site",
            "edge",
            "--tier",
            "edge",
            "--cores",
            "1",
            "--memory",
            "512MiB",
            "--label",
            "region=eu",
        ],
    );
    let NodeEvent::Up(up) = next_about(&mut events, Duration::from_secs(30)).await else {
        panic!("the node did not come up")
    };
    assert_eq!(
        (up.name.as_str(), up.site.as_str(), up.tier),
        ("edge-1", "edge", Tier::Edge)
    );
    assert_eq!((up.cores, up.memory), (1, 512 << 20));
    assert_eq!(up.labels.get("region").map(String::as_str), Some("eu"));
    assert_eq!(up.arch, std::env::consts::ARCH);
    assert!(up.compute_score > 1.0, "measured {}", up.compute_score);

    signal(&node, "-KILL");
    let killed = Instant::now();
    let _ = node.wait();
    // The control plane removes the lost node's entry, and every watcher is told.
    match next_about(&mut events, lost_after + Duration::from_secs(60)).await {
        NodeEvent::Gone(name) => assert_eq!(name, "edge-1"),
        other => panic!("expected the node to be gone: {other:?}"),
    }
    let noticed = killed.elapsed();
    // Never before the silence it is allowed, which began at the node's last heartbeat
    // (up to one period before the kill); how much later is a matter of load.
    assert!(
        noticed + tern_cluster::backbone::HEARTBEAT >= lost_after,
        "declared lost after {noticed:?}"
    );
    eprintln!("killed node declared lost after {noticed:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_node_leaves_at_once() {
    let d = scratch();
    let (server, bb) = backbone(d.path()).await;
    // Credentials another continuum's authority signed are refused before the node
    // does anything, and so is a node with none.
    let forged = stranger_credentials(d.path(), "intruder");
    tern(d.path())
        .args([
            "node",
            "--nats",
            server.url(),
            "--name",
            "intruder",
            "--creds",
        ])
        .arg(&forged)
        .arg("--ca")
        .arg(server.ca_file())
        .run()
        .fails_with(
            1,
            &format!("NATS at {} refused these credentials", server.url()),
        );
    tern(d.path())
        .args(["node", "--nats", server.url(), "--name", "intruder"])
        .run()
        .fails_with(1, "node intruder has no credentials for the backbone");
    assert!(bb.nodes().await.expect("nodes").is_empty());
    let mut events = Box::pin(bb.watch_nodes().await.expect("watch"));
    let mut node = spawn_node(
        d.path(),
        &server,
        "iot-1",
        &["--tier", "iot", "--engine", "pulley", "--memory", "128MiB"],
    );
    let NodeEvent::Up(up) = next_about(&mut events, Duration::from_secs(60)).await else {
        panic!("the node did not come up")
    };
    assert_eq!(up.engine.as_str(), "pulley");
    signal(&node, "-TERM");
    let stopped = Instant::now();
    let status = node.wait().expect("exits");
    let stderr = std::fs::read_to_string(d.path().join("node-iot-1.log")).expect("the node's log");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("node iot-1 joined tls://127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("node iot-1 left"), "{stderr}");
    loop {
        if let NodeEvent::Gone(name) = next_about(&mut events, Duration::from_secs(2)).await {
            assert_eq!(name, "iot-1");
            break;
        }
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    server.stop().await;
}

#[test]
fn bad_node_flags_and_an_unreachable_backbone_are_one_line() {
    let d = scratch();
    let url = format!("nats://{}", free_addr());
    let creds = stranger_credentials(d.path(), "edge-1");
    tern(d.path())
        .args(["node", "--nats", &url, "--name", "edge-1", "--creds"])
        .arg(&creds)
        .run()
        .fails_with(1, &format!("error: cannot reach NATS at {url}: "));
    let cases: &[(&[&str], &str)] = &[
        (&["--name", "Edge_1"], "`Edge_1` is not a node name"),
        (
            &["--name", "e", "--tier", "fog"],
            "unknown tier `fog` (expected cloud, edge or iot)",
        ),
        (
            &["--name", "e", "--label", "region"],
            "`region`: write a label as KEY=VALUE",
        ),
        (
            &["--name", "e", "--memory", "512"],
            "`512` has no unit: write 512MiB",
        ),
        (&["--name", "e", "--cores", "0"], "--cores"),
        (
            &["--name", "e", "--site", "a.b>"],
            "`a.b>` is not a site name",
        ),
    ];
    for (flags, needle) in cases {
        let r = tern(d.path()).arg("node").args(*flags).run();
        assert_eq!(r.code, Some(2), "{flags:?}: {r:?}");
        assert!(
            r.stderr.contains(needle),
            "{flags:?}: expected {needle:?} in {}",
            r.stderr
        );
    }
}

/// A node whose own async runtime is held up (here its only worker is blocked for
/// longer than the control plane waits for a heartbeat, as fifty migrations coming in
/// on a busy machine held it) still says it is alive: its heartbeats go out from a
/// thread and a connection of their own.
#[test]
fn heartbeats_go_on_while_the_agents_runtime_is_held_up() {
    let d = scratch();
    let outer = tokio::runtime::Runtime::new().expect("runtime");
    let (server, watcher) = outer.block_on(backbone(d.path()));
    let name = "held";
    let creds = server.node_credentials(name).expect("node credentials");
    let login = tern_cluster::backbone::Login {
        creds: Some(std::fs::read_to_string(creds).expect("creds")),
        ca: Some(server.ca_file()),
    };
    let mut beats = outer.block_on(async {
        watcher
            .client
            .subscribe(tern_cluster::protocol::alive_subject(name))
            .await
            .expect("subscribe")
    });
    // The agent's runtime has one worker, which the test blocks.
    let agent = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = tern_cluster::agent::NodeConfig {
        name: name.into(),
        site: name.into(),
        tier: Tier::Edge,
        engine: tern_runtime::EngineKind::Cranelift,
        cores: 1,
        memory: 256 << 20,
        labels: Default::default(),
        link_listen: "127.0.0.1:0".parse().expect("addr"),
        link_advertise: None,
        state: d.path().join("node"),
        tern: env!("CARGO_BIN_EXE_tern").into(),
        links: Default::default(),
        tls: None,
    };
    let url = server.url().to_owned();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = agent.spawn(async move {
        let bb = tern_cluster::backbone::Backbone::join_as_node(&url, &login, name)
            .await
            .expect("joins");
        tern_cluster::agent::run(config, &bb, async { drop(stopped.await) }, |_| {})
            .await
            .expect("the agent runs");
    });
    let first = outer
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), beats.next()).await });
    assert!(matches!(first, Ok(Some(_))), "no first heartbeat");
    let held = tern_cluster::backbone::LOST_AFTER + Duration::from_secs(2);
    agent.spawn(async move { std::thread::sleep(held) });
    // While the worker is held, heartbeats keep coming, none further apart than the
    // control plane's patience.
    let (started, mut last, mut count, mut widest) =
        (Instant::now(), Instant::now(), 0, Duration::ZERO);
    while started.elapsed() < held {
        let beat = outer.block_on(async {
            tokio::time::timeout(tern_cluster::backbone::LOST_AFTER, beats.next()).await
        });
        match beat {
            Ok(Some(_)) => {
                widest = widest.max(last.elapsed());
                last = Instant::now();
                count += 1;
            }
            _ => panic!(
                "no heartbeat for {:?} while the agent's runtime was held ({count} before)",
                tern_cluster::backbone::LOST_AFTER
            ),
        }
    }
    assert!(count >= 2, "{count} heartbeats in {held:?}");
    eprintln!("{count} heartbeats while the runtime was held for {held:?}; widest gap {widest:?}");
    let _ = stop.send(());
    outer
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), running).await })
        .expect("the agent leaves")
        .expect("the agent's task");
    // The client's subscription and connection end within their runtime.
    outer.block_on(async move { drop((beats, watcher)) });
}
