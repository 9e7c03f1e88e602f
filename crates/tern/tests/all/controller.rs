//! The control plane and the verbs that ask it, on a real nats-server with real node
//! agents: `tern nodes` lists what joined, `tern plan` explains a placement, and the
//! API refuses what it cannot read with a 4xx and one line.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tern_cluster::backbone::NatsServer;

use crate::support::{READ_TOKEN, Run, TOKEN, free_addr, scratch, signal, spawn_node, tern};

/// Retries `tern nodes --json` until `want` nodes are listed.
fn wait_for_nodes(dir: &std::path::Path, api: &str, want: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = tern(dir)
            .env("TERN_TOKEN", READ_TOKEN)
            .args(["nodes", "--json", "--api", api])
            .run();
        if r.code == Some(0) {
            let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
            if v.as_array().map_or(0, Vec::len) == want {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{want} nodes never listed: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One raw HTTP/1.1 exchange; returns the status line and the body.
fn raw_http(addr: &str, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_and_plans_through_the_api() {
    let d = scratch();
    let server = NatsServer::start(&d.path().join("nats"), 0)
        .await
        .expect("nats-server");
    let addr = free_addr();
    let api = format!("http://{addr}");
    let mut controller = crate::support::spawn_controller(d.path(), &server, &addr);
    let mut agents = [
        spawn_node(
            d.path(),
            &server,
            "cloud",
            &[
                "--tier",
                "cloud",
                "--cores",
                "2",
                "--memory",
                "4GiB",
                "--label",
                "region=eu",
            ],
        ),
        spawn_node(
            d.path(),
            &server,
            "iot",
            &[
                "--tier", "iot", "--engine", "pulley", "--cores", "1", "--memory", "128MiB",
            ],
        ),
    ];
    let nodes = wait_for_nodes(d.path(), &api, 2);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("the JSON has it")
        .iter()
        .map(|n| n["name"].as_str().expect("the JSON has it"))
        .collect();
    assert_eq!(names, ["cloud", "iot"]);
    for n in nodes.as_array().expect("the JSON has it") {
        assert!(
            n["compute_score"].as_f64().expect("the JSON has it") > 0.0,
            "{n}"
        );
        assert!(n["tier"].is_string() && n["arch"].is_string(), "{n}");
    }
    let cloud = nodes[0]["compute_score"].as_f64().expect("the JSON has it");
    let iot = nodes[1]["compute_score"].as_f64().expect("the JSON has it");
    assert!(
        cloud > 5.0 * iot,
        "cranelift on 2 cores {cloud}, pulley on 1 {iot}"
    );

    // The nodes ping each other over their links; the control plane folds the round
    // trips into its matrix by site.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rtt = loop {
        let r = tern(d.path())
            .env("TERN_TOKEN", READ_TOKEN)
            .args(["nodes", "--latency", "--json", "--api", &api])
            .run();
        let pairs: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
        if let Some(p) = pairs.as_array().and_then(|a| a.first()) {
            assert_eq!(
                (p["a"].as_str(), p["b"].as_str()),
                (Some("cloud"), Some("iot")),
                "{pairs}"
            );
            break p["ms"].as_f64().expect("ms");
        }
        assert!(Instant::now() < deadline, "no round trip measured: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(rtt > 0.0 && rtt < 50.0, "loopback round trip {rtt} ms");
    let latency = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["nodes", "--latency", "--api", &api])
        .run();
    assert!(latency.succeeds().contains("cloud  iot"), "{latency:?}");
    let near = d.path().join("near.toml");
    std::fs::write(
        &near,
        "name = \"agg\"\nmodule = \"agg.wasm\"\nnear = \"iot\"\nmax_rtt_ms = 50\n",
    )
    .expect("write");
    let plan = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["plan", "--json", "--api", &api])
        .arg(&near)
        .run();
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).expect("JSON");
    let eligible = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["verdict"] == "eligible")
        .count();
    assert_eq!(
        eligible, 2,
        "both nodes are within 50 ms of iot, measured: {v}"
    );

    let table = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["nodes", "--api", &api])
        .run();
    let out = table.succeeds();
    assert!(out.starts_with("NAME "), "{out}");
    assert!(out.contains("cloud") && out.contains("pulley"), "{out}");

    // A manifest only the IoT node's engine fits, and one that wants the EU label.
    let m = d.path().join("app.toml");
    std::fs::write(
        &m,
        "name = \"agg\"\nmodule = \"agg.wasm\"\n[constraints]\nengine = \"pulley\"\n",
    )
    .expect("write");
    let plan = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["plan", "--api", &api])
        .arg(&m)
        .run();
    let out = plan.succeeds();
    assert!(out.starts_with("would go to iot\n"), "{out}");
    assert!(out.contains("engine: is cranelift, needs pulley"), "{out}");
    std::fs::write(&m, "name = \"agg\"\nmodule = \"agg.wasm\"\n[limits]\nmemory = \"256MiB\"\n[constraints]\nlabels = { region = \"us\" }\n").expect("write");
    let plan = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["plan", "--json", "--api", &api])
        .arg(&m)
        .run();
    assert_eq!(plan.code, Some(0), "{plan:?}");
    let v: serde_json::Value = serde_json::from_str(&plan.stdout).expect("JSON");
    assert_eq!(v["chosen"], serde_json::Value::Null);
    let iot_why: Vec<&str> = v["nodes"][1]["rejections"]
        .as_array()
        .expect("the JSON has it")
        .iter()
        .map(|r| r["text"].as_str().expect("the JSON has it"))
        .collect();
    assert_eq!(
        iot_why,
        [
            "label region: missing, needs us",
            "free memory: 128 MiB free, the app reserves 256 MiB"
        ]
    );
    let none = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["plan", "--api", &api])
        .arg(&m)
        .run();
    assert_eq!(none.code, Some(3), "{none:?}");
    assert!(none.stdout.starts_with("no node can take it"), "{none:?}");

    // Bad manifests are refused with file, line and field, before the API is asked.
    std::fs::write(&m, "name = \"agg\"\nmodule = \"agg.wasm\"\nreplicas = 0\n").expect("write");
    tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["plan", "--api", &api])
        .arg(&m)
        .run()
        .fails_with(1, "app.toml: line 3: replicas: must be 1 to 1000");

    // The API itself: garbage, a huge body, a wrong path, bad UTF-8. Each is a 4xx
    // with one JSON line, and the API lives on.
    let (status, body) = raw_http(&addr, b"POST /v1/plan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-read-only-token-for-dashboards\r\nContent-Length: 9\r\nConnection: close\r\n\r\nname = 1\n");
    assert!(status.contains(" 422 "), "{status}");
    assert!(body.contains("\"error\":\"invalid manifest: "), "{body}");
    let mut huge = format!(
        "POST /v1/plan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-read-only-token-for-dashboards\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        4 << 20
    )
    .into_bytes();
    huge.resize(huge.len() + (4 << 20), b'a');
    let (status, _) = raw_http(&addr, &huge);
    assert!(status.contains(" 413 "), "{status}");
    let (status, body) = raw_http(
        &addr,
        b"GET /v1/nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-read-only-token-for-dashboards\r\nConnection: close\r\n\r\n",
    );
    assert!(
        status.contains(" 404 ") && body.contains("no such endpoint: GET /v1/nope"),
        "{status} {body}"
    );
    let (status, body) = raw_http(&addr, b"POST /v1/plan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-read-only-token-for-dashboards\r\nContent-Length: 2\r\nConnection: close\r\n\r\n\xff\xfe");
    assert!(
        status.contains(" 400 ") && body.contains("not UTF-8"),
        "{status} {body}"
    );
    // Reads need a token too; the read-only one reads, and acts on nothing.
    let (status, body) = raw_http(
        &addr,
        b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        status.contains(" 401 ") && body.contains("this request needs a token"),
        "{status} {body}"
    );
    let (status, _) = raw_http(
        &addr,
        b"GET /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer guess\r\nConnection: close\r\n\r\n",
    );
    assert!(status.contains(" 401 "), "{status}");
    let (status, body) = raw_http(
        &addr,
        b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-read-only-token-for-dashboards\r\nConnection: close\r\n\r\n",
    );
    assert!(
        status.contains(" 200 ") && body.contains("\"cloud\""),
        "{status} {body}"
    );
    for act in [
        "DELETE /v1/apps/agg HTTP/1.1",
        "GET /v1/apps/agg/logs HTTP/1.1",
        "POST /v1/nodes/cloud/drain HTTP/1.1",
    ] {
        let (status, body) = raw_http(
            &addr,
            format!("{act}\r\nHost: x\r\nAuthorization: Bearer {READ_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            status.contains(" 403 ") && body.contains("the read-only token only reads"),
            "{act}: {status} {body}"
        );
    }
    let (status, _) = raw_http(&addr, b"\x00\x01garbage\r\n\r\n");
    assert!(status.is_empty() || status.contains(" 400 "), "{status}");
    wait_for_nodes(d.path(), &api, 2);
    // A client that sends half its headers and stalls is cut off after the header
    // timeout, and the API answers others meanwhile.
    let mut stall = TcpStream::connect(&addr).expect("connect");
    stall
        .write_all(b"POST /v1/plan HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a-read-only-token-for-dashboards\r\n")
        .expect("half a request");
    let stalled = Instant::now();
    wait_for_nodes(d.path(), &api, 2);
    stall
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut rest = Vec::new();
    let _ = stall.read_to_end(&mut rest);
    let cut = stalled.elapsed();
    assert!(
        cut >= tern_cluster::control::HEADER_TIMEOUT - Duration::from_millis(500)
            && cut < tern_cluster::control::HEADER_TIMEOUT + Duration::from_secs(3),
        "a stalled client was cut off after {cut:?}"
    );

    for a in &mut agents {
        signal(a, "-TERM");
        let _ = a.wait();
    }
    signal(&controller, "-TERM");
    let status = controller.wait().expect("controller exits");
    assert!(status.success(), "{status:?}");
    server.stop().await;
}

#[test]
fn a_controller_serves_beyond_loopback_only_with_a_token_and_tls() {
    let d = scratch();
    tern(d.path())
        .args(["controller", "--nats", "nats://127.0.0.1:9", "--listen", "0.0.0.0:0"])
        .run()
        .fails_with(
            1,
            "the API refuses to serve on 0.0.0.0:0 without a token: anyone who reaches it could act on the continuum",
        );
    let with_token = |extra: &[&str]| {
        tern(d.path())
            .env("TERN_TOKEN", TOKEN)
            .args([
                "controller",
                "--nats",
                "nats://127.0.0.1:9",
                "--listen",
                "0.0.0.0:0",
            ])
            .args(extra)
            .run()
    };
    with_token(&[]).fails_with(
        1,
        "the API refuses to serve on 0.0.0.0:0 in plain HTTP: its tokens, join tokens and the apps' output would cross the network in clear",
    );
    // A certificate that is not one is named, before anything listens.
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").expect("write");
    let junk = junk.display().to_string();
    let line = with_token(&["--tls-cert", &junk, "--tls-key", &junk])
        .fails_with(1, "the API's certificate")
        .to_owned();
    assert!(line.contains(&junk), "{line}");
}

#[test]
fn an_unreachable_api_says_what_to_start() {
    let d = scratch();
    let api = format!("http://{}", free_addr());
    let r: Run = tern(d.path())
        .env("TERN_TOKEN", READ_TOKEN)
        .args(["nodes", "--api", &api])
        .run();
    r.fails_with(
        1,
        &format!(
            "cannot reach the Tern API at {api}: nothing listens there; start one with `tern up`"
        ),
    );
}
