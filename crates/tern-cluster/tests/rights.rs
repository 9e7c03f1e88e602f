//! A real nats-server enforces the rights `tern-trust` writes into user JWTs: a user
//! publishes where its JWT allows and nowhere else, a connection without valid
//! credentials is refused, and a revoked user is cut off at once and cannot come back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tern_trust::nats::{Authority, CLAIMS_UPDATE, Rights, credentials, new_user};

/// A nats-server trusting `authority`'s operator, on a port of its own.
struct Server {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn start(authority: &Authority) -> Server {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let config = format!(
        "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{}",
        dir.path().join("js").display().to_string(),
        authority
            .server_config(&dir.path().join("accounts"))
            .expect("config")
    );
    let conf = dir.path().join("server.conf");
    std::fs::write(&conf, config).expect("write config");
    let path = tern_cluster::backbone::find_nats_server().expect("nats-server is installed");
    let child = std::process::Command::new(path)
        .arg("--config")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nats-server did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Server {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// A user of Tern's account with `rights`: its public key and its credentials.
fn user(authority: &Authority, name: &str, rights: &Rights) -> (String, String) {
    let (seed, public) = new_user().expect("user");
    let jwt = authority.user_jwt(name, &public, rights).expect("jwt");
    (public, credentials(&jwt, &seed))
}

/// Server errors a client was told of.
type Errors = Arc<Mutex<Vec<String>>>;

async fn connect(url: &str, creds: &str) -> Result<(async_nats::Client, Errors), String> {
    let errors: Errors = Arc::default();
    let seen = errors.clone();
    let client = async_nats::ConnectOptions::with_credentials(creds)
        .map_err(|e| e.to_string())?
        .retry_on_initial_connect()
        .max_reconnects(Some(1))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    Ok((client, errors))
}

/// Whether the server told the client an error that contains `needle`.
fn told(errors: &Errors, needle: &str) -> bool {
    errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|e| e.contains(needle))
}

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_publishes_only_where_its_jwt_allows() {
    let authority = Authority::generate();
    let server = start(&authority).await;
    let everything = Rights {
        publish: vec![">".into()],
        subscribe: vec![">".into()],
        ..Rights::default()
    };
    let (_, watcher_creds) = user(&authority, "watcher", &everything);
    let (watcher, _) = connect(&server.url, &watcher_creds).await.expect("watcher");
    let mut beats = watcher.subscribe("tern.alive.*").await.expect("subscribe");
    watcher.flush().await.expect("flush");

    let edge_rights = Rights {
        publish: vec!["tern.alive.edge".into()],
        subscribe: vec!["_INBOX.>".into()],
        ..Rights::default()
    };
    let (_, edge_creds) = user(&authority, "edge", &edge_rights);
    let (edge, errors) = connect(&server.url, &edge_creds).await.expect("edge");
    // Posing as another node: refused by the server. Then its own heartbeat, which
    // arrives; the forbidden one, sent first on the same connection, never did.
    edge.publish("tern.alive.cloud", "impostor".into())
        .await
        .expect("sent");
    edge.publish("tern.alive.edge", "edge".into())
        .await
        .expect("sent");
    edge.flush().await.expect("flush");
    let first = beats.next().await.expect("a heartbeat");
    assert_eq!(first.subject.as_str(), "tern.alive.edge");
    wait_for("the server's refusal", || {
        told(
            &errors,
            "Permissions Violation for Publish to \"tern.alive.cloud\"",
        )
    })
    .await;
    // Nor may it listen where it has no right.
    let _ = edge.subscribe("tern.alive.*").await;
    edge.flush().await.ok();
    wait_for("the refusal of the subscription", || {
        told(
            &errors,
            "Permissions Violation for Subscription to \"tern.alive.*\"",
        )
    })
    .await;

    // Credentials signed by another operator's account open nothing.
    let stranger = Authority::generate();
    let (_, stranger_creds) = user(&stranger, "edge", &everything);
    let refused = async_nats::ConnectOptions::with_credentials(&stranger_creds)
        .expect("creds parse")
        .connect(&server.url)
        .await;
    assert!(refused.is_err(), "a stranger's credentials were accepted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_user_is_cut_off_at_once_and_cannot_come_back() {
    let mut authority = Authority::generate();
    let server = start(&authority).await;
    let rights = Rights {
        publish: vec!["tern.alive.edge".into()],
        subscribe: vec!["_INBOX.>".into()],
        ..Rights::default()
    };
    let (edge_key, edge_creds) = user(&authority, "edge", &rights);
    let (edge, _) = connect(&server.url, &edge_creds).await.expect("edge");
    assert_eq!(
        edge.connection_state(),
        async_nats::connection::State::Connected
    );

    authority.revoke(&edge_key).expect("revoke");
    let (seed, public) = new_user().expect("system user");
    let system_creds = credentials(
        &authority
            .system_user_jwt("tern-control", &public)
            .expect("jwt"),
        &seed,
    );
    let (system, _) = connect(&server.url, &system_creds)
        .await
        .expect("system user");
    let answer = system
        .request(
            CLAIMS_UPDATE,
            authority.account_jwt().expect("jwt").into_bytes().into(),
        )
        .await
        .expect("the server answers the update");
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    assert!(answer.contains("\"code\":200"), "{answer}");

    wait_for("the revoked user's disconnection", || {
        edge.connection_state() != async_nats::connection::State::Connected
    })
    .await;
    let again = async_nats::ConnectOptions::with_credentials(&edge_creds)
        .expect("creds parse")
        .connect(&server.url)
        .await;
    assert!(again.is_err(), "a revoked user connected again");
    // Others go on.
    let (other_key, other_creds) = user(&authority, "cloud", &rights);
    assert!(!authority.is_revoked(&other_key));
    connect(&server.url, &other_creds)
        .await
        .expect("another user");
}

fn descriptor(name: &str) -> tern_cluster::NodeDescriptor {
    tern_cluster::NodeDescriptor {
        name: name.into(),
        arch: std::env::consts::ARCH.into(),
        tier: tern_cluster::Tier::Edge,
        engine: Default::default(),
        cores: 1,
        memory: 1 << 30,
        site: name.into(),
        labels: std::collections::BTreeMap::new(),
        tee: tern_cluster::Tee::None,
        compute_score: 1.0,
        load: tern_cluster::NodeLoad::default(),
        link: None,
        rtt_ms: std::collections::BTreeMap::new(),
    }
}

/// The nodes in the registry, by name.
async fn node_names(control: &tern_cluster::backbone::Backbone) -> Vec<String> {
    let nodes = control.nodes().await.expect("nodes");
    nodes.into_iter().map(|n| n.name).collect()
}

/// A node's own credentials, made from the protocol's table, on the server `tern up`
/// runs: it writes its own registry key, and the server refuses its writes to another
/// node's key, to the deployments and to the join tokens, and its subscription to
/// another node's commands.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_writes_its_own_names_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tmp");
    let server = tern_cluster::backbone::NatsServer::start(&dir.path().join("nats"), 0)
        .await
        .expect("nats-server starts");
    let control = server.backbone().await.expect("the control plane joins");
    let creds =
        std::fs::read_to_string(server.node_credentials("edge").expect("creds")).expect("read");
    let login = tern_cluster::backbone::Login {
        creds: Some(creds),
        ca: Some(server.ca_file()),
    };
    let edge = tern_cluster::backbone::Backbone::join_as_node(server.url(), &login, "edge")
        .await
        .expect("edge joins");
    edge.register(&descriptor("edge"))
        .await
        .expect("its own key");
    assert_eq!(node_names(&control).await, ["edge"]);

    // Posing as cloud: the server refuses the write, so no acknowledgement comes.
    let refused =
        tokio::time::timeout(Duration::from_secs(5), edge.register(&descriptor("cloud"))).await;
    assert!(!matches!(refused, Ok(Ok(()))), "edge wrote cloud's key");
    let js = async_nats::jetstream::new(edge.client.clone());
    for subject in [
        "$KV.tern-apps.ticker",
        "$KV.tern-join-tokens.x",
        "$KV.tern-identities.edge",
        "$JS.API.STREAM.DELETE.KV_tern-apps",
    ] {
        let acked = async { js.publish(subject, "{}".into()).await.ok()?.await.ok() };
        let acked = tokio::time::timeout(Duration::from_secs(5), acked).await;
        assert!(
            matches!(acked, Ok(None) | Err(_)),
            "edge's write to {subject} was acknowledged"
        );
    }
    assert!(control.apps().await.expect("apps").is_empty());
    assert_eq!(node_names(&control).await, ["edge"]);
    // Another node's commands do not reach it; its own do.
    let mut theirs = edge
        .client
        .subscribe(tern_cluster::protocol::command_subject("cloud"))
        .await
        .expect("subscribe is sent");
    let mut own = edge
        .client
        .subscribe(tern_cluster::protocol::command_subject("edge"))
        .await
        .expect("subscribe");
    edge.client.flush().await.expect("flush");
    // Sent again until its own arrives: plain NATS messages sent while a connection
    // is being made again are not kept.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let got = loop {
        for node in ["cloud", "edge"] {
            control
                .client
                .publish(tern_cluster::protocol::command_subject(node), node.into())
                .await
                .expect("publish");
        }
        control.client.flush().await.expect("flush");
        if let Ok(got) = tokio::time::timeout(Duration::from_secs(1), own.next()).await {
            break got.expect("a message");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "its own command never arrived"
        );
    };
    assert_eq!(&got.payload[..], b"edge");
    let leaked = tokio::time::timeout(Duration::from_secs(2), theirs.next()).await;
    assert!(
        !matches!(leaked, Ok(Some(_))),
        "edge read cloud's command subject"
    );
    server.stop().await;
}
