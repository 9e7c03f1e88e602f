//! Signed modules: `tern keygen`, `tern sign` and `tern verify`, a manifest's
//! `signed_by` checked at deploy, and a node that refuses a module whose signatures fail
//! before it runs any of it, on a real nats-server with real `tern` processes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{TOKEN, free_addr, guest, scratch, spawn_controller, spawn_node, tern};

/// Makes a key in `dir` and returns its file and public key.
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(format!("{name}.key"));
    let path = path.to_str().expect("utf-8").to_owned();
    let made = tern(dir).args(["keygen", "--out", &path]).run();
    let public = made.succeeds().trim().to_owned();
    assert!(
        public.starts_with("ed25519:") && public.len() == 8 + 64,
        "{made:?}"
    );
    (path, public)
}

#[test]
fn keygen_sign_and_verify_accept_a_signed_module_and_refuse_each_alteration() {
    let d = scratch();
    let (key, public) = keygen(d.path(), "alice");
    let (_, other) = keygen(d.path(), "bob");
    // A key is never overwritten.
    tern(d.path())
        .args(["keygen", "--out", &key])
        .run()
        .fails_with(1, "exists already");
    let module = d.path().join("hello.wasm");
    std::fs::copy(guest("hello"), &module).expect("copy");
    let m = module.to_str().expect("utf-8");
    // Unsigned.
    tern(d.path())
        .args(["verify", m])
        .run()
        .fails_with(1, "is not signed");
    let signed = tern(d.path()).args(["sign", m, "--key", &key]).run();
    assert!(signed.succeeds().contains(&public), "{signed:?}");
    let ok = tern(d.path()).args(["verify", m, "--key", &public]).run();
    assert!(
        ok.succeeds()
            .contains(&format!("signed by {public}: valid")),
        "{ok:?}"
    );
    // Signed, but not by the key required.
    tern(d.path())
        .args(["verify", m, "--key", &other])
        .run()
        .fails_with(1, &format!("is not signed by {other}"));
    // The module altered after signing: one byte.
    let altered = d.path().join("altered.wasm");
    let mut bytes = std::fs::read(&module).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&altered, &bytes).expect("write");
    let sig = d.path().join("hello.wasm.sig");
    let s = sig.to_str().expect("utf-8");
    tern(d.path())
        .args(["verify", altered.to_str().expect("utf-8"), "--sig", s])
        .run()
        .fails_with(1, "changed after it was signed");
    // The signature altered: one hex digit.
    let text = std::fs::read_to_string(&sig).expect("sig");
    let at = text.find("\"signature\": \"").expect("a signature") + 14;
    let mut forged = text.clone().into_bytes();
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    std::fs::write(&sig, &forged).expect("write");
    tern(d.path())
        .args(["verify", m])
        .run()
        .fails_with(1, &format!("the signature by {public} does not verify"));
    // Garbage in the signature file is one line too.
    std::fs::write(&sig, "not json").expect("write");
    tern(d.path())
        .args(["verify", m])
        .run()
        .fails_with(1, "not a Tern signature file");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_module_runs_and_a_node_refuses_one_whose_signature_fails_before_running_it() {
    let d = scratch();
    let server = tern_cluster::backbone::NatsServer::start(&d.path().join("nats"), 0)
        .await
        .expect("nats-server");
    let addr = free_addr();
    let api = format!("http://{addr}");
    let _controller = spawn_controller(d.path(), &server, &addr);
    let state = d.path().join("edge");
    let _edge = spawn_node(
        d.path(),
        &server,
        "edge",
        &["--tier", "edge", "--state", state.to_str().expect("utf-8")],
    );
    let verb = |args: &[&str]| {
        tern(d.path())
            .args(args)
            .args(["--api", &api])
            .env("TERN_TOKEN", TOKEN)
            .run()
    };
    let (key, public) = keygen(d.path(), "release");
    let module = d.path().join("hello.wasm");
    std::fs::copy(guest("hello"), &module).expect("copy");
    let manifest = d.path().join("hello.toml");
    std::fs::write(
        &manifest,
        format!("name = \"hello\"\nmodule = \"hello.wasm\"\nsigned_by = [\"{public}\"]\n"),
    )
    .expect("manifest");
    let m = manifest.to_str().expect("utf-8");
    // Unsigned: refused at deploy, with the cause (asked again while the controller
    // and the node come up).
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let r = verb(&["deploy", m]);
        if r.stderr.contains("refused") || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    refused.fails_with(
        1,
        "refused: the module is not signed, and its policy requires",
    );
    assert!(
        verb(&["ps", "--json"]).succeeds().trim() == "[]",
        "nothing is deployed"
    );
    // Signed: it runs.
    tern(d.path())
        .args(["sign", module.to_str().expect("utf-8"), "--key", &key])
        .run()
        .succeeds();
    while verb(&["deploy", m]).code != Some(0) {
        assert!(Instant::now() < deadline, "never deployed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let bb = server.backbone().await.expect("backbone");
    let state_of = |app: &'static str| {
        let bb = bb.clone();
        async move { bb.status(app).await.ok().flatten().map(|s| s.state) }
    };
    let wait_end = |app: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(s) = state_of(app).await
                && matches!(
                    s,
                    tern_cluster::InstanceState::Exited { .. }
                        | tern_cluster::InstanceState::Failed { .. }
                )
            {
                return s;
            }
            assert!(Instant::now() < deadline, "{app} never ended");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(
        wait_end("hello").await,
        tern_cluster::InstanceState::Exited { code: 0 }
    );
    assert_eq!(
        verb(&["logs", "hello"]).succeeds(),
        "hello from WebAssembly\n"
    );

    // Records written past the control plane's checks (as anyone who can write the
    // deployments could): the node checks again before it runs any of the module.
    let record = bb.app("hello").await.expect("read").expect("hello").0;
    let other = bb
        .put_module(&std::fs::read(guest("steps")).expect("steps"))
        .await
        .expect("module");
    let forge = |name: &str, module: &str, signatures| tern_cluster::apps::AppRecord {
        name: name.into(),
        manifest: record.manifest.replace("\"hello\"", &format!("\"{name}\"")),
        module: module.into(),
        node: Some("edge".into()),
        incarnation: 1,
        signatures,
        ..record.clone()
    };
    // Another module under the signatures of the signed one.
    let swapped = forge("swapped", &other, record.signatures.clone());
    // The signed module with no signatures.
    let unsigned = forge("unsigned", &record.module, None);
    for r in [&swapped, &unsigned] {
        assert!(bb.put_app(r, 0).await.expect("put").is_some(), "{}", r.name);
    }
    for (app, cause) in [
        (
            "swapped",
            "module refused: the module was changed after it was signed",
        ),
        ("unsigned", "module refused: the module is not signed"),
    ] {
        match wait_end(app).await {
            tern_cluster::InstanceState::Failed { reason } => {
                assert!(reason.starts_with(cause), "{app}: {reason}");
            }
            other => panic!("{app} ran: {other:?}"),
        }
        // Not one instruction of it ran: no output, and its module was never written
        // where an instance would load it.
        assert_eq!(verb(&["logs", app]).succeeds(), "", "{app}");
        let laid_out = state.join("apps").join(app).join("1").join("module.wasm");
        assert!(!laid_out.exists(), "{}", laid_out.display());
    }
}
