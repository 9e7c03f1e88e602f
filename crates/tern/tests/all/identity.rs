//! Node identity on a real nats-server: a node enrols once with a one-time join token,
//! its name is bound to its key, and a revoked node is cut off by the server and its
//! app placed elsewhere.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_cluster::backbone::NatsServer;

use crate::continuum::write_app;
use crate::support::{
    READ_TOKEN, Run, Running, TOKEN, free_addr, guest, scratch, spawn_controller, tern, wait_until,
};

/// A verb against the API at `api`, with the API's token.
fn verb(dir: &Path, api: &str, args: &[&str]) -> Run {
    tern(dir)
        .args(args)
        .args(["--api", api])
        .env("TERN_TOKEN", TOKEN)
        .run()
}

/// A one-time join token, once the control plane answers.
fn join_token(dir: &Path, api: &str) -> String {
    wait_until("a join token", Duration::from_secs(60), || {
        let r = verb(dir, api, &["node", "token"]);
        (r.code == Some(0)).then(|| r.stdout.trim().to_owned())
    })
}

/// `tern node --join API --token TOKEN --name NAME`, its state in `dir/NAME`.
fn enrol(dir: &Path, server: &NatsServer, api: &str, token: &str, name: &str) -> Running {
    enrol_in(dir, server, api, token, name, name)
}

/// [`enrol`], the node's state in `dir/STATE`.
fn enrol_in(
    dir: &Path,
    server: &NatsServer,
    api: &str,
    token: &str,
    name: &str,
    state: &str,
) -> Running {
    Running(
        tern(dir)
            .env("TERN_JOIN_TOKEN", token)
            .args([
                "node",
                "--nats",
                server.url(),
                "--join",
                api,
                "--name",
                name,
            ])
            .args(["--memory", "256MiB", "--state"])
            .arg(dir.join(state))
            .spawn_logged(&dir.join(format!("node-{state}.log"))),
    )
}

/// Waits until node `name` is listed.
fn joined(dir: &Path, api: &str, name: &str) {
    wait_until(&format!("{name} to join"), Duration::from_secs(60), || {
        nodes(dir, api).iter().any(|n| n == name).then_some(())
    });
}

fn nodes(dir: &Path, api: &str) -> Vec<String> {
    let r = verb(dir, api, &["nodes", "--json"]);
    let v: Value = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A nats-server in `dir` and a control plane that enrols nodes: the server, the API's
/// URL and the control plane's process.
async fn continuum(dir: &Path) -> (NatsServer, String, Running) {
    let server = NatsServer::start(&dir.join("nats"), 0)
        .await
        .expect("nats-server starts");
    let addr = free_addr();
    let controller = spawn_controller(dir, &server, &addr);
    (server, format!("http://{addr}"), controller)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_enrols_once_and_its_name_is_bound_to_its_key() {
    let d = scratch();
    let (server, api, _controller) = continuum(d.path()).await;
    let token = join_token(d.path(), &api);
    let _edge = enrol(d.path(), &server, &api, &token, "edge");
    joined(d.path(), &api, "edge");
    let creds = std::fs::read_to_string(d.path().join("edge/identity.creds")).expect("kept");
    let seed = tern_trust::nats::seed_of_credentials(&creds).expect("a seed");
    let log = std::fs::read_to_string(d.path().join("node-edge.log")).expect("log");
    assert!(!log.contains(&seed), "{log}");

    // The token is spent: a stolen copy enrols nothing.
    tern(d.path())
        .env("TERN_JOIN_TOKEN", &token)
        .args(["node", "--join", &api, "--name", "thief", "--state"])
        .arg(d.path().join("thief"))
        .run()
        .fails_with(1, "this join token is unknown, already spent or expired");
    // A second agent under a bound name, with a key of its own, is refused, and the
    // token it brought is not spent on it.
    let fresh = join_token(d.path(), &api);
    let r = tern(d.path())
        .env("TERN_JOIN_TOKEN", &fresh)
        .args(["node", "--join", &api, "--name", "edge", "--state"])
        .arg(d.path().join("impostor"))
        .run();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(
        r.stderr.contains(
            "node name `edge` is enrolled with another key: `tern node revoke edge` first"
        ),
        "{r:?}"
    );
    assert!(!d.path().join("impostor/identity.creds").exists());
    let _iot = enrol(d.path(), &server, &api, &fresh, "iot");
    joined(d.path(), &api, "iot");
    // Only the API's token makes join tokens.
    let r = tern(d.path())
        .args(["node", "token", "--api", &api])
        .env("TERN_TOKEN", READ_TOKEN)
        .run();
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("the read-only token only reads"), "{r:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_node_is_cut_off_and_its_app_runs_elsewhere() {
    let d = scratch();
    let (server, api, _controller) = continuum(d.path()).await;
    let a = enrol(d.path(), &server, &api, &join_token(d.path(), &api), "a");
    joined(d.path(), &api, "a");
    let m = write_app(
        d.path(),
        "steady",
        &guest("steps"),
        "name = \"steady\"\nargs = [\"600\", \"40000000\"]\nmigratable = true\ncheckpoint_every = \"1s\"\n",
    );
    verb(d.path(), &api, &["deploy", m.to_str().expect("utf-8")]).succeeds();
    let app = |dir: &Path| -> Option<Value> {
        let r = verb(dir, &api, &["ps", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["name"] == "steady")
            .cloned()
    };
    wait_until("steady running on a", Duration::from_secs(120), || {
        app(d.path()).filter(|a| a["state"] == "running" && a["node"] == "a")
    });
    let _b = enrol(d.path(), &server, &api, &join_token(d.path(), &api), "b");
    joined(d.path(), &api, "b");

    let r = verb(d.path(), &api, &["node", "revoke", "a"]);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(r.stdout.starts_with("node a revoked (key U"), "{r:?}");
    // The server refuses a's key from now on.
    tern(d.path())
        .args(["node", "--nats", server.url(), "--name", "a", "--creds"])
        .arg(d.path().join("a/identity.creds"))
        .arg("--ca")
        .arg(server.ca_file())
        .run()
        .fails_with(1, "refused these credentials");
    // The node learns it was revoked, stops its app and exits, in one line.
    let mut a = a;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = a.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the revoked node did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = std::fs::read_to_string(d.path().join("node-a.log")).expect("log");
    assert!(
        log.contains("error: node a was revoked: the backbone refuses its credentials"),
        "{log}"
    );
    // Its app goes on elsewhere, from its last checkpoint.
    wait_until("steady running on b", Duration::from_secs(120), || {
        app(d.path()).filter(|a| a["state"] == "running" && a["node"] == "b")
    });
    assert!(!nodes(d.path(), &api).contains(&"a".to_owned()));
    // The name may be enrolled again, with another key.
    let token = join_token(d.path(), &api);
    let _again = enrol_in(d.path(), &server, &api, &token, "a", "a-again");
    joined(d.path(), &api, "a");
    server.stop().await;
}
