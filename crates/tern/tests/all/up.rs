//! `tern up`: a whole continuum on one machine, as separate processes, stopped by Ctrl-C
//! with nothing left running.

use std::time::{Duration, Instant};

use crate::support::{Running, free_addr, scratch, signal, tern};

/// The command lines of running `tern node` processes that use `state`'s server.
fn node_processes(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(" node --nats ") && cmd.contains(needle) {
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
fn up_starts_three_node_processes_and_ctrl_c_stops_them_all() {
    let d = scratch();
    let addr = free_addr();
    let api = format!("http://{addr}");
    let mut up = Running(
        tern(d.path())
            .inherit(&["HOME"])
            .args(["up", "--listen", &addr, "--state"])
            .arg(d.path().join("state"))
            .spawn_logged(&d.path().join("up.log")),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let nodes = loop {
        // The read-only token `tern up` keeps beside the API's token reads the API.
        let read =
            std::fs::read_to_string(d.path().join("state/api/read-token")).unwrap_or_default();
        let r = tern(d.path())
            .env("TERN_TOKEN", read.trim())
            .args(["nodes", "--json", "--api", &api])
            .run();
        if r.code == Some(0) {
            let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
            if v.as_array().map_or(0, Vec::len) == 3 {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the continuum never came up: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let tiers: Vec<(&str, &str, &str)> = nodes
        .as_array()
        .expect("array")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().expect("name"),
                n["tier"].as_str().expect("tier"),
                n["engine"].as_str().expect("engine"),
            )
        })
        .collect();
    assert_eq!(
        tiers,
        [
            ("cloud", "cloud", "cranelift"),
            ("edge", "edge", "cranelift"),
            ("iot", "iot", "pulley")
        ]
    );
    // Each node is a plain `tern node` process an operator can find and kill.
    let state = d.path().join("state");
    let procs = node_processes("--name edge");
    assert!(procs.iter().any(|p| p.contains("--tier edge")), "{procs:?}");
    assert!(state.join("logs/iot.log").is_file());

    signal(&up, "-INT");
    let status = up.wait().expect("tern up exits");
    let stderr = std::fs::read_to_string(d.path().join("up.log")).expect("tern up's log");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("continuum up: nodes cloud, edge, iot"),
        "{stderr}"
    );
    let kept = state.join("api/token");
    let token = std::fs::read_to_string(&kept).expect("the API's token is kept");
    // Where the secrets are, never a secret: a log that keeps stderr keeps none.
    let told = format!("the API's token is in {}", kept.display());
    assert!(stderr.contains(&told), "{stderr}");
    assert!(!stderr.contains(token.trim()), "{stderr}");
    let read = std::fs::read_to_string(state.join("api/read-token")).expect("kept");
    assert!(!stderr.contains(read.trim()), "{stderr}");
    let creds = std::fs::read_to_string(state.join("nats/control.creds")).expect("kept");
    let seed = tern_trust::nats::seed_of_credentials(&creds).expect("a seed");
    assert!(!stderr.contains(&seed), "{stderr}");
    // A join command for another machine, with a one-time token kept out of the log.
    let join = std::fs::read_to_string(state.join("api/join-command")).expect("join command");
    assert!(
        join.starts_with("tern node --join http://127.0.0.1:"),
        "{join}"
    );
    assert!(join.contains(" --ca-fingerprint sha256:"), "{join}");
    let one_time = join
        .split(" --token ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .expect("a token");
    assert_eq!(one_time.len(), 64, "{join}");
    assert!(!stderr.contains(one_time), "{stderr}");
    // Each node has its own credentials, which only its owner reads.
    for node in ["cloud", "edge", "iot"] {
        let file = state.join(format!("nats/nodes/{node}.creds"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file)
                .expect("node credentials")
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", file.display());
    }
    assert!(stderr.ends_with("continuum stopped\n"), "{stderr}");
    let url = stderr
        .split("NATS on ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .expect("the NATS URL")
        .to_owned();
    assert!(
        node_processes(&url).is_empty(),
        "{:?}",
        node_processes(&url)
    );
}

#[test]
fn up_refuses_a_bad_config_and_a_taken_port_in_one_line() {
    let d = scratch();
    let config = d.path().join("continuum.toml");
    std::fs::write(
        &config,
        "[[node]]\nname = \"gw\"\ntier = \"fog\"\nmemory = \"64MiB\"\n",
    )
    .expect("write");
    tern(d.path())
        .args(["up", "--config"])
        .arg(&config)
        .run()
        .fails_with(1, "continuum.toml: node 1 (gw): unknown tier `fog`");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    tern(d.path())
        .inherit(&["HOME"])
        .args(["up", "--listen", &addr, "--state"])
        .arg(d.path().join("state"))
        .run()
        .fails_with(1, &format!("cannot listen on {addr}: it is in use"));
}
