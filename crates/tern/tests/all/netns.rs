//! Another machine, as a network namespace joined to this one by a veth link: a node
//! there joins the continuum with the command `tern up --listen 0.0.0.0:PORT` wrote,
//! over the link's real addresses (HTTPS to the API, TLS to the backbone, both to the
//! continuum's CA), and runs an app placed on it. A join whose pin is wrong, or that
//! would send its token in plain HTTP, sends nothing.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::continuum::write_app;
use crate::support::{Running, Tern, free_addr, guest, scratch, tern, wait_until};

/// A network namespace and the veth link to it, removed when dropped (the namespace's
/// end of the link goes with it).
struct Namespace {
    name: String,
    host_link: String,
    /// This machine's address on the link, and the namespace's.
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    ip_in(None, args);
}

/// `ip ARGS`, in namespace `ns` if given (entered with nsenter, which a chroot allows
/// where `ip netns exec` does not).
fn ip_in(ns: Option<&str>, args: &[&str]) {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    let out = command
        .args(args)
        .output()
        .expect("ip (iproute2; scripts/setup.sh installs it) and nsenter (util-linux)");
    assert!(
        out.status.success(),
        "ip {} in {}: {}",
        args.join(" "),
        ns.unwrap_or("this namespace"),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespace {
    fn new() -> Namespace {
        let id = std::process::id() % 10_000;
        let octet = id % 250 + 1;
        let ns = Namespace {
            name: format!("tern-t{id}"),
            host_link: format!("tvh{id}"),
            host_ip: format!("10.231.{octet}.1"),
            ns_ip: format!("10.231.{octet}.2"),
        };
        let peer = format!("tvn{id}");
        // Left from an earlier run with the same pid: gone first.
        let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &ns.host_link])
            .output();
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_link,
        ]);
        ip(&["link", "set", &ns.host_link, "up"]);
        let inside = |args: &[&str]| ip_in(Some(&ns.name), args);
        inside(&["addr", "add", &format!("{}/24", ns.ns_ip), "dev", &peer]);
        inside(&["link", "set", &peer, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

#[test]
fn a_node_in_another_namespace_joins_with_the_printed_command_and_runs_an_app() {
    let d = scratch();
    let net = Namespace::new();
    let port = free_addr().rsplit(':').next().expect("a port").to_owned();
    let state = d.path().join("state");
    let _up = Running(
        tern(d.path())
            .inherit(&["HOME"])
            .args([
                "up",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--advertise",
                &net.host_ip,
            ])
            .arg("--state")
            .arg(&state)
            .spawn_logged(&d.path().join("up.log")),
    );
    let command = wait_until("the join command", Duration::from_secs(120), || {
        std::fs::read_to_string(state.join("api/join-command")).ok()
    });
    let expected = format!("tern node --join https://{}:{port} --token ", net.host_ip);
    assert!(command.starts_with(&expected), "{command}");
    // The command, as another machine's operator would type it.
    let words: Vec<String> = command
        .trim()
        .split(' ')
        .skip(2)
        .map(|w| match w {
            "NAME" | "SITE" => "far".to_owned(),
            w => w.to_owned(),
        })
        .collect();
    let token_of = |words: &[String]| {
        let at = words.iter().position(|w| w == "--token").expect("--token");
        words[at + 1].clone()
    };
    let join_token = token_of(&words);
    // A pin that is not the continuum CA's: refused before the token is sent, which
    // the printed command then spends as if nothing happened.
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let pinned = Tern::in_namespace(&d.path().join("cache-far"), &net.name)
        .args(["node", "--join", &format!("https://{}:{port}", net.host_ip)])
        .args(["--token", &join_token, "--ca-fingerprint", &wrong_pin])
        .args(["--name", "thief", "--state"])
        .arg(d.path().join("thief"))
        .run();
    let line = pinned.fails_with(1, "not the continuum's; nothing was sent");
    assert!(line.contains(&wrong_pin), "{line}");
    // Nor in plain HTTP beyond loopback, whatever answers there.
    let plain = Tern::in_namespace(&d.path().join("cache-far"), &net.name)
        .args(["node", "--join", &format!("http://{}:{port}", net.host_ip)])
        .args(["--token", &join_token, "--name", "thief", "--state"])
        .arg(d.path().join("thief"))
        .run();
    plain.fails_with(1, "will not send its join token");
    let far_state = d.path().join("far");
    let far = Running(
        Tern::in_namespace(&d.path().join("cache-far"), &net.name)
            .arg("node")
            .args(&words)
            .args(["--label", "where=far", "--memory", "256MiB", "--state"])
            .arg(&far_state)
            .spawn_logged(&d.path().join("far.log")),
    );
    let api = format!("https://127.0.0.1:{port}");
    let ca = state.join("nats/tls/ca.pem");
    let token = std::fs::read_to_string(state.join("api/token")).expect("the API's token");
    let verb = |args: &[&str]| {
        tern(d.path())
            .args(args)
            .args(["--api", &api])
            .env("TERN_TOKEN", token.trim())
            .env("TERN_CA", &ca.display().to_string())
            .run()
    };
    // The API is HTTPS, and a client trusts no CA but the one it is given.
    let other = d.path().join("other-ca.pem");
    let other_ca = tern_trust::tls::Ca::generate().expect("a CA");
    std::fs::write(&other, other_ca.cert_pem()).expect("write");
    let refused = tern(d.path())
        .args(["nodes", "--api", &api])
        .env("TERN_TOKEN", token.trim())
        .env("TERN_CA", &other.display().to_string())
        .run();
    refused.fails_with(1, "TLS refused");
    let plain = tern(d.path())
        .args(["nodes", "--api", &format!("http://127.0.0.1:{port}")])
        .env("TERN_TOKEN", token.trim())
        .run();
    assert_ne!(plain.code, Some(0), "{plain:?}");
    wait_until("far to join", Duration::from_secs(120), || {
        let r = verb(&["nodes", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        v.as_array()?
            .iter()
            .any(|n| n["name"] == "far")
            .then_some(())
    });
    let log = std::fs::read_to_string(d.path().join("far.log")).expect("far's log");
    assert!(
        log.contains(&format!("node far joined tls://{}:", net.host_ip)),
        "{log}"
    );
    assert!(far_state.join("identity.creds").is_file());

    let steps = guest("steps");
    let reference = tern(d.path())
        .arg("run")
        .arg(&steps)
        .args(["5", "1000"])
        .run();
    let m = write_app(
        d.path(),
        "there",
        &steps,
        "name = \"there\"\nargs = [\"5\", \"1000\"]\n[constraints]\nlabels = { where = \"far\" }\n",
    );
    verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
    let done = wait_until("the app to end on far", Duration::from_secs(180), || {
        let r = verb(&["ps", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        let a = v.as_array()?.iter().find(|a| a["name"] == "there")?.clone();
        (a["state"] == "exited").then_some(a)
    });
    assert_eq!(done["node"], "far", "{done}");
    assert_eq!(verb(&["logs", "there"]).succeeds(), reference.stdout);
    drop(far);
}
