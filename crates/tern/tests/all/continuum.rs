//! Apps on a continuum of real processes: `tern up` with its nats-server and three
//! `tern node`s, driven by the verbs as a user would: deploy, ps, logs, explain, rm; a
//! node killed with SIGKILL and its app restored elsewhere; `tern up` stopped and
//! started again, its app resuming.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    Run, Running, TOKEN, free_addr, guest, scratch, signal, signal_pid, sqlite_guest, tern,
};

/// A `tern up` of this test, and how to talk to it.
pub(crate) struct Up {
    pub(crate) up: Running,
    dir: PathBuf,
    pub(crate) state: PathBuf,
    api: String,
    /// Its stdout and stderr (appended to by every `tern up` of the test), from
    /// `log_from` on.
    log: PathBuf,
    log_from: u64,
}

impl Up {
    /// Starts `tern up` on `state` (in `dir`) and waits for its three nodes.
    pub(crate) fn start(dir: &Path, state: &Path) -> Up {
        let addr = free_addr();
        let log = dir.join("up.log");
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len());
        let up = Running(
            tern(dir)
                .inherit(&["HOME"])
                .args(["up", "--listen", &addr, "--state"])
                .arg(state)
                .spawn_logged(&log),
        );
        let up = Up {
            up,
            dir: dir.to_path_buf(),
            state: state.to_path_buf(),
            api: format!("http://{addr}"),
            log,
            log_from,
        };
        up.wait_for("three nodes", Duration::from_secs(90), || {
            let r = up.verb(&["nodes", "--json"]);
            (r.code == Some(0)
                && serde_json::from_str::<Value>(&r.stdout)
                    .is_ok_and(|v| v.as_array().map_or(0, Vec::len) == 3))
            .then_some(())
        });
        up
    }

    pub(crate) fn token(&self) -> String {
        std::fs::read_to_string(self.state.join(tern_cluster::up::API_TOKEN_FILE))
            .unwrap_or_default()
    }

    /// `tern ARGS --api … --token …`.
    pub(crate) fn verb(&self, args: &[&str]) -> Run {
        tern(&self.dir)
            .args(args)
            .args(["--api", &self.api])
            .env("TERN_TOKEN", &self.token())
            .run()
    }

    /// `tern ps --json`, by name.
    pub(crate) fn app(&self, name: &str) -> Option<Value> {
        let r = self.verb(&["ps", "--json"]);
        let apps: Value = serde_json::from_str(r.succeeds()).expect("ps JSON");
        apps.as_array()?.iter().find(|a| a["name"] == name).cloned()
    }

    /// Waits until `app`'s state is `state`, and returns its `ps` row.
    pub(crate) fn wait_state(&self, app: &str, state: &str, within: Duration) -> Value {
        self.wait_for(&format!("{app} {state}"), within, || {
            self.app(app).filter(|a| a["state"] == state)
        })
    }

    pub(crate) fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(t) = f() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "waited {within:?} for {what}; ps: {:?}",
                self.verb(&["ps"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pid of this continuum's node `name`.
    pub(crate) fn node_pid(&self, name: &str) -> u32 {
        self.try_node_pid(name)
            .unwrap_or_else(|| panic!("no process of node {name}"))
    }

    /// The pid of this continuum's node `name`, if it runs.
    pub(crate) fn try_node_pid(&self, name: &str) -> Option<u32> {
        let needle = format!("--name {name} ");
        let state = self.state.join("nodes").join(name);
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let cmd = std::fs::read(entry.path().join("cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                (cmd.contains(" node ")
                    && cmd.contains(&needle)
                    && cmd.contains(&state.display().to_string()))
                .then(|| entry.file_name().to_string_lossy().parse().ok())
                .flatten()
            })
    }

    /// Stops `tern up` with Ctrl-C and returns its stderr.
    pub(crate) fn stop(mut self) -> String {
        signal(&self.up, "-INT");
        let status = self.up.wait().expect("tern up exits");
        let all = std::fs::read(&self.log).expect("tern up's log");
        let stderr =
            String::from_utf8_lossy(&all[(self.log_from as usize).min(all.len())..]).into_owned();
        assert!(status.success(), "{status:?}: {stderr}");
        stderr
    }
}

/// The instance processes still running under `state`.
pub(crate) fn instances(state: &Path) -> usize {
    let needle = state.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains(" instance ") && c.contains(&needle)
            })
        })
        .count()
}

pub(crate) fn write_app(dir: &Path, file: &str, wasm: &Path, body: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::copy(wasm, dir.join(format!("{file}.wasm"))).expect("copy module");
    std::fs::write(&path, format!("module = \"{file}.wasm\"\n{body}")).expect("manifest");
    path
}

#[test]
fn deploys_are_placed_by_their_filters_explained_and_refused_with_every_reason() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    // The sites' links are emulated: the nodes measure the round trips of the default
    // config (cloud–edge 20 ms, edge–iot 5 ms, cloud–iot 40 ms) through them.
    let rtts = up.wait_for("three round trips", Duration::from_secs(30), || {
        let r = up.verb(&["nodes", "--latency", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).ok()?;
        (v.as_array()?.len() == 3).then_some(v)
    });
    for (pair, (a, b, ms)) in rtts.as_array().expect("pairs").iter().zip([
        ("cloud", "edge", 20.0),
        ("cloud", "iot", 40.0),
        ("edge", "iot", 5.0),
    ]) {
        assert_eq!((pair["a"].as_str(), pair["b"].as_str()), (Some(a), Some(b)));
        let got = pair["ms"].as_f64().expect("ms");
        assert!(
            got >= ms && got < ms + 30.0,
            "{a}–{b}: {got} ms, emulated {ms}"
        );
    }
    let steps = guest("steps");
    let reference = tern(d.path())
        .arg("run")
        .arg(&steps)
        .args(["4", "1000000"])
        .run();
    assert_eq!(reference.code, Some(3), "{reference:?}");

    let cases = [
        ("by-tier", "[constraints]\ntier = \"edge\"\n", "edge"),
        ("by-engine", "[constraints]\nengine = \"pulley\"\n", "iot"),
        ("by-memory", "[limits]\nmemory = \"1GiB\"\n", "cloud"),
    ];
    for (name, body, node) in cases {
        let m = write_app(
            d.path(),
            name,
            &steps,
            &format!("name = \"{name}\"\nargs = [\"4\", \"1000000\"]\n{body}"),
        );
        let out = up.verb(&["deploy", m.to_str().expect("utf-8")]);
        assert!(
            out.succeeds()
                .contains(&format!("deployed {name} on {node}")),
            "{out:?}"
        );
    }
    for (name, _, node) in cases {
        let row = up.wait_state(name, "exited", Duration::from_secs(60));
        assert_eq!(row["node"], node, "{row}");
        assert_eq!(row["code"], 3, "{row}");
        let logs = up.verb(&["logs", name]);
        assert_eq!(logs.succeeds(), reference.stdout, "{name}");
    }

    // Explain: the chosen node's score, and every filter the others fail.
    let e = up.verb(&["explain", "by-tier", "--json"]);
    let e: Value = serde_json::from_str(e.succeeds()).expect("JSON");
    assert_eq!(e["node"], "edge");
    let nodes = e["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{e}");
    assert_eq!(nodes[0]["node"], "edge");
    assert_eq!(nodes[0]["verdict"], "eligible");
    for n in &nodes[1..] {
        assert_eq!(n["verdict"], "rejected", "{n}");
        assert_eq!(n["rejections"][0]["filter"], "tier", "{n}");
    }
    let why = up.verb(&["explain", "by-tier", "--why-not", "iot"]);
    let text = why.succeeds();
    assert!(
        text.lines()
            .any(|l| l.starts_with("iot ") && l.contains(" rejected ")),
        "{text}"
    );
    assert!(text.contains("tier: is iot, needs edge"), "{text}");
    assert!(
        !text.contains("cloud "),
        "only the node asked about: {text}"
    );

    // No node passes: the deploy is refused with every node's every reason, and
    // nothing is deployed.
    let m = write_app(
        d.path(),
        "nowhere",
        &steps,
        "name = \"nowhere\"\n[constraints]\narch = \"aarch64\"\ntee = \"sgx\"\nlabels = { region = \"eu\" }\n",
    );
    let refused = up.verb(&["deploy", m.to_str().expect("utf-8")]);
    let line = refused.fails_with(1, "no node can take nowhere: cloud: ");
    for reason in [
        "arch: is x86_64, needs aarch64",
        "label region: missing, needs eu",
        "tee: is none, needs sgx",
    ] {
        assert!(line.contains(reason), "{reason}: {line}");
    }
    assert_eq!(line.matches("arch: is x86_64").count(), 3, "{line}");
    assert!(up.app("nowhere").is_none());

    // Replicas are apps of their own, spread over sites; `rm NAME` removes them all.
    let m = write_app(
        d.path(),
        "web",
        &steps,
        "name = \"web\"\nargs = [\"4\", \"1000000\"]\nreplicas = 3\nspread = \"site\"\n[limits]\nmemory = \"16MiB\"\n",
    );
    // The plan names where each replica would go, as the deploy then places them.
    let plan = up.verb(&["plan", m.to_str().expect("utf-8")]);
    let planned = plan
        .succeeds()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(planned.starts_with("would deploy web-1 to "), "{plan:?}");
    let out = up.verb(&["deploy", m.to_str().expect("utf-8")]);
    assert!(out.succeeds().contains("3 replicas: web-1 on "), "{out:?}");
    let mut nodes = std::collections::BTreeSet::new();
    for name in ["web-1", "web-2", "web-3"] {
        let row = up.wait_state(name, "exited", Duration::from_secs(60));
        let node = row["node"].as_str().expect("node").to_owned();
        assert!(
            planned.contains(&format!("{name} to {node}")),
            "{planned} / {row}"
        );
        nodes.insert(node);
        assert_eq!(up.verb(&["logs", name]).succeeds(), reference.stdout);
    }
    // Three sites can take them (the iot node among them): one replica each.
    assert_eq!(nodes.len(), 3, "spread over sites: {nodes:?}");
    for verb in ["logs", "explain"] {
        up.verb(&[verb, "web"]).fails_with(
            1,
            "web is a deployment of 3 replicas, each an app of its own: name one of web-1, web-2, web-3",
        );
    }
    up.verb(&["rm", "web"]).succeeds();
    for name in ["web-1", "web-2", "web-3"] {
        assert!(up.app(name).is_none(), "{name} was removed");
    }

    // rm stops and forgets.
    up.verb(&["rm", "by-tier"]).succeeds();
    assert!(up.app("by-tier").is_none());
    up.verb(&["logs", "by-tier"])
        .fails_with(1, "no app named by-tier; `tern ps` lists them");
    up.stop();
}

#[test]
fn bad_manifests_modules_and_requests_are_refused_and_nothing_is_deployed() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let steps = guest("steps");
    let bad = write_app(
        d.path(),
        "bad",
        &steps,
        "name = \"bad\"\n[constraints]\ntier = \"fog\"\n",
    );
    up.verb(&["deploy", bad.to_str().expect("utf-8")])
        .fails_with(1, "bad: line 4: constraints.tier: unknown tier `fog`");

    // A module that does not validate.
    let junk = d.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0\x01\x05").expect("write");
    std::fs::write(
        d.path().join("junk.toml"),
        "name = \"junk\"\nmodule = \"junk.wasm\"\n",
    )
    .expect("write");
    up.verb(&[
        "deploy",
        d.path().join("junk.toml").to_str().expect("utf-8"),
    ])
    .fails_with(1, "the module does not validate");

    // A memory limit below what the module starts with could never run.
    let small = write_app(
        d.path(),
        "small",
        &steps,
        "name = \"small\"\n[limits]\nmemory = \"64KiB\"\n",
    );
    up.verb(&["deploy", small.to_str().expect("utf-8")])
        .fails_with(1, "limits.memory: 64 KiB is below the ");
    // A module larger than the continuum takes is refused before it is sent.
    let huge = d.path().join("huge.wasm");
    // A valid module made huge by a custom section of 65 MiB.
    let mut wasm = b"\0asm\x01\0\0\0\0".to_vec();
    let mut size = (65u32 << 20) + 2;
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        wasm.push(if size == 0 { byte } else { byte | 0x80 });
        if size == 0 {
            break;
        }
    }
    wasm.extend_from_slice(b"\x01x");
    wasm.resize(wasm.len() + (65 << 20), 0);
    std::fs::write(&huge, wasm).expect("write");
    std::fs::write(
        d.path().join("huge.toml"),
        "name = \"huge\"\nmodule = \"huge.wasm\"\n",
    )
    .expect("write");
    up.verb(&[
        "deploy",
        d.path().join("huge.toml").to_str().expect("utf-8"),
    ])
    .fails_with(1, "is over the 64 MiB the continuum takes");
    // Removing a name removes the app of that name and the replicas of it.
    let reps = write_app(
        d.path(),
        "dups",
        &steps,
        "name = \"dup\"\nargs = [\"1\", \"1\"]\nreplicas = 2\n",
    );
    up.verb(&["deploy", reps.to_str().expect("utf-8")])
        .succeeds();
    let dup = write_app(
        d.path(),
        "dup",
        &steps,
        "name = \"dup\"\nargs = [\"1\", \"1\"]\n",
    );
    up.verb(&["deploy", dup.to_str().expect("utf-8")])
        .succeeds();
    assert_eq!(
        up.verb(&["rm", "dup"]).succeeds(),
        "removed dup, dup-1, dup-2\n"
    );
    for name in ["dup", "dup-1", "dup-2"] {
        assert!(up.app(name).is_none(), "{name} is still there");
    }

    // The same deploy again (a client that timed out tries again) changes nothing and
    // says so; another deploy under a taken name is refused.
    let ok = write_app(
        d.path(),
        "twice",
        &steps,
        "name = \"twice\"\nargs = [\"1\", \"1\"]\n",
    );
    up.verb(&["deploy", ok.to_str().expect("utf-8")]).succeeds();
    let placed = up.app("twice").expect("deployed");
    let again = up.verb(&["deploy", ok.to_str().expect("utf-8")]);
    let again = again.succeeds();
    assert!(
        again.starts_with(
            "twice: deployed already with this manifest and module, unchanged: twice on "
        ),
        "{again}"
    );
    let after = up.app("twice").expect("still deployed");
    assert_eq!(
        (&after["node"], &after["incarnation"]),
        (&placed["node"], &placed["incarnation"]),
        "{after}"
    );
    let other = write_app(
        d.path(),
        "twice",
        &steps,
        "name = \"twice\"\nargs = [\"2\", \"1\"]\n",
    );
    up.verb(&["deploy", other.to_str().expect("utf-8")])
        .fails_with(1, "an app named twice is deployed already");

    // Without the token, nothing that acts is done.
    tern(d.path())
        .args(["rm", "twice", "--api", &up.api, "--token", "wrong"])
        .run()
        .fails_with(1, "this request needs a token");
    assert!(up.app("twice").is_some());

    // Requests no verb would send.
    let raw = |request: &str| -> String {
        use std::io::Write as _;
        let addr = up.api.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    };
    let token = up.token();
    let garbage = raw(&format!(
        "POST /v1/apps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{{{{{{{{{"
    ));
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(garbage.contains("not a deploy request"), "{garbage}");
    let damaged = raw(&format!(
        "PUT /v1/modules/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        "0".repeat(64)
    ));
    assert!(damaged.starts_with("HTTP/1.1 422"), "{damaged}");
    assert!(damaged.contains("damaged or cut short"), "{damaged}");
    let unsigned = raw(
        "DELETE /v1/apps/twice HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    let ps = up.verb(&["ps", "--json"]);
    let apps: Value = serde_json::from_str(ps.succeeds()).expect("JSON");
    let names: Vec<&str> = apps
        .as_array()
        .expect("array")
        .iter()
        .map(|a| a["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["twice"]);
    up.stop();
}

#[test]
fn a_node_that_hangs_has_its_sqlite_app_restored_elsewhere_without_losing_a_row() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let wasm = sqlite_guest();
    let rows = 120;
    let reference_dir = d.path().join("ref");
    std::fs::create_dir(&reference_dir).expect("mkdir");
    let reference = tern(d.path())
        .arg("run")
        .arg(format!("--dir={}::/data", reference_dir.display()))
        .arg(&wasm)
        .args(["/data/rows.db", &rows.to_string(), "15000000"])
        .run();
    assert_eq!(reference.code, Some(0), "{reference:?}");

    let m = write_app(
        d.path(),
        "rows",
        &wasm,
        &format!(
            "name = \"rows\"\nargs = [\"/data/rows.db\", \"{rows}\", \"15000000\"]\nmigratable = true\ncheckpoint_every = \"1s\"\n[[volumes]]\nguest = \"/data\"\n[constraints]\ntier = [\"edge\", \"cloud\"]\n"
        ),
    );
    up.verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
    let row = up.wait_state("rows", "running", Duration::from_secs(30));
    let first = row["node"].as_str().expect("node").to_owned();
    let other = if first == "edge" { "cloud" } else { "edge" };
    // Killed once it has committed rows and been checkpointed.
    up.wait_for(
        "a checkpoint and some rows",
        Duration::from_secs(60),
        || {
            let logs = up.verb(&["logs", "rows"]);
            let a = up.app("rows")?;
            (logs.stdout.lines().count() > 10 && a["checkpoint_age_s"].is_number()).then_some(())
        },
    );
    // The node hangs (SIGSTOP: it says nothing more, as a machine that froze or was
    // cut off), so the control plane declares it lost and places its app elsewhere;
    // `tern up` would start a node that exited again at once, and the app would resume
    // there instead.
    let pid = up.node_pid(&first);
    let killed = Instant::now();
    signal_pid(pid, "-STOP");
    let moved = up.wait_for("rows on the other node", Duration::from_secs(60), || {
        up.app("rows")
            .filter(|a| a["node"] == other && a["state"] == "running")
    });
    eprintln!(
        "restored on {other} {:?} after the SIGSTOP",
        killed.elapsed()
    );
    // Then it dies for good: `tern up` starts it again, and the node that comes back
    // runs nothing of the app (it was placed elsewhere).
    signal_pid(pid, "-KILL");
    assert_eq!(moved["restarts"], 1, "{moved}");
    let note = moved["note"].as_str().expect("note");
    assert!(
        note.contains(&format!(
            "node {first} is lost; restored on {other} from its checkpoint of"
        )),
        "{note}"
    );
    let done = up.wait_state("rows", "exited", Duration::from_secs(120));
    assert_eq!(done["code"], 0, "{done}");
    // Every committed row is there once, and the output neither lost nor repeated a
    // line across the restore.
    let logs = up.verb(&["logs", "rows"]);
    assert_eq!(logs.succeeds(), reference.stdout);
    assert_eq!(instances(&up.state), 0, "no instance outlived its run");
    up.stop();
}

#[test]
fn a_continuum_stopped_with_ctrl_c_resumes_its_app_when_started_again() {
    let d = scratch();
    let state = d.path().join("state");
    let steps = guest("steps");
    let args = ["60", "100000000"];
    let reference = tern(d.path()).arg("run").arg(&steps).args(args).run();
    assert_eq!(reference.code, Some(3), "{reference:?}");
    let up = Up::start(d.path(), &state);
    let m = write_app(
        d.path(),
        "long",
        &steps,
        &format!(
            "name = \"long\"\nargs = [\"{}\", \"{}\"]\nmigratable = true\ncheckpoint_every = \"1h\"\n",
            args[0], args[1]
        ),
    );
    up.verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
    up.wait_for("some steps", Duration::from_secs(60), || {
        (up.verb(&["logs", "long"]).stdout.lines().count() >= 3).then_some(())
    });
    let stderr = up.stop();
    assert!(stderr.ends_with("continuum stopped\n"), "{stderr}");
    assert_eq!(instances(&state), 0);

    let up = Up::start(d.path(), &state);
    let done = up.wait_state("long", "exited", Duration::from_secs(120));
    assert_eq!(done["code"], 3, "{done}");
    assert_eq!(up.verb(&["logs", "long"]).succeeds(), reference.stdout);
    up.stop();
}

#[test]
fn a_live_migration_and_a_drain_lose_and_repeat_nothing() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let journal = guest("journal");
    let steps = guest("steps");
    let args = ["/data", "80", "20000000"];
    let reference_dir = d.path().join("ref");
    std::fs::create_dir(&reference_dir).expect("mkdir");
    let reference = tern(d.path())
        .arg("run")
        .arg(format!("--dir={}::/data", reference_dir.display()))
        .arg(&journal)
        .args(args)
        .run();
    assert_eq!(reference.code, Some(0), "{reference:?}");
    let m = write_app(
        d.path(),
        "journal",
        &journal,
        &format!(
            "name = \"journal\"\nargs = {args:?}\nmigratable = true\ncheckpoint_every = \"1s\"\n[[volumes]]\nguest = \"/data\"\n[constraints]\ntier = [\"edge\", \"cloud\"]\n"
        ),
    );
    up.verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
    let row = up.wait_state("journal", "running", Duration::from_secs(30));
    let first = row["node"].as_str().expect("node").to_owned();
    let other = if first == "edge" { "cloud" } else { "edge" };

    // A node the app's constraints refuse: nothing moves.
    up.verb(&["migrate", "journal", "--to", "iot"]).fails_with(
        1,
        "iot cannot take journal: tier: is iot, needs edge or cloud; it stays on",
    );
    // There and back again, live.
    for (i, to) in [other, first.as_str()].into_iter().enumerate() {
        // After a move, the destination reports the app running as soon as the source
        // has handed its output over: well before the handover's 10 s time-out.
        let within = if i == 0 { 30 } else { 5 };
        up.wait_state("journal", "running", Duration::from_secs(within));
        let out = up.verb(&["migrate", "journal", "--to", to, "--json", "--wait"]);
        let moved: Value = serde_json::from_str(out.succeeds()).expect("JSON");
        assert_eq!(moved["state"], "done", "{moved}");
        assert!(moved["live"].as_bool().expect("live"), "{moved}");
        assert_eq!(moved["to"], to, "{moved}");
        assert!(moved["stats"]["downtime_ms"].as_f64().expect("downtime") > 0.0);
    }
    let done = up.wait_state("journal", "exited", Duration::from_secs(120));
    assert_eq!(done["code"], 0, "{done}");
    assert_eq!(done["node"], first, "{done}");
    assert_eq!(done["restarts"], 0, "{done}");
    assert_eq!(up.verb(&["logs", "journal"]).succeeds(), reference.stdout);
    let copied = d.path().join("journal.txt");
    up.verb(&[
        "cp",
        "journal:/data/journal.txt",
        copied.to_str().expect("utf-8"),
    ])
    .succeeds();
    assert_eq!(
        std::fs::read(&copied).expect("copied"),
        std::fs::read(reference_dir.join("journal.txt")).expect("reference")
    );
    up.verb(&["cp", "journal:/data/../../etc/passwd", "-"])
        .fails_with(1, "give a file inside the volume, without `..`");

    // A drain: the migratable app moves live, the other restarts elsewhere.
    for (name, migratable) in [("live", true), ("plain", false)] {
        let m = write_app(
            d.path(),
            name,
            &steps,
            &format!(
                "name = \"{name}\"\nargs = [\"400\", \"100000000\"]\nmigratable = {migratable}\n[constraints]\ntier = \"{first}\"\n[[affinity]]\ntier = \"{other}\"\nweight = 1\n"
            ),
        );
        up.verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
        up.wait_state(name, "running", Duration::from_secs(30));
    }
    // Constrained to one node, they cannot leave it: the drain says so and moves
    // nothing.
    let stuck = up.verb(&["drain", &first, "--wait"]);
    assert_eq!(stuck.code, Some(3), "{stuck:?}");
    assert!(stuck.stdout.contains("stayed"), "{stuck:?}");
    up.verb(&["drain", &first, "--undo"]).succeeds();
    for name in ["live", "plain"] {
        up.verb(&["rm", name]).succeeds();
        let m = write_app(
            d.path(),
            name,
            &steps,
            &format!(
                "name = \"{name}\"\nargs = [\"400\", \"100000000\"]\nmigratable = {}\n[constraints]\ntier = [\"edge\", \"cloud\"]\n",
                name == "live"
            ),
        );
        up.verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
    }
    let live = up.wait_state("live", "running", Duration::from_secs(30));
    let plain = up.wait_state("plain", "running", Duration::from_secs(30));
    // Both on the node to drain: the live one joins the plain one there.
    let drained = plain["node"].as_str().expect("node").to_owned();
    if live["node"] != drained.as_str() {
        up.verb(&["migrate", "live", "--to", &drained, "--wait"])
            .succeeds();
        up.wait_state("live", "running", Duration::from_secs(30));
    }
    up.wait_for("plain's first lines", Duration::from_secs(60), || {
        (!up.verb(&["logs", "plain"]).stdout.is_empty()).then_some(())
    });
    let out = up.verb(&["drain", &drained, "--json", "--wait"]);
    let moves: Value = serde_json::from_str(out.succeeds()).expect("JSON");
    let how = |name: &str| {
        moves
            .as_array()
            .expect("moves")
            .iter()
            .find(|m| m["app"] == name)
            .map(|m| {
                (
                    m["state"].as_str().expect("state").to_owned(),
                    m["live"] == true,
                )
            })
    };
    assert_eq!(how("live"), Some(("done".to_owned(), true)), "{moves}");
    assert_eq!(how("plain"), Some(("done".to_owned(), false)), "{moves}");
    let row = up.wait_state("plain", "running", Duration::from_secs(30));
    let note = row["note"].as_str().expect("note");
    assert!(
        note.starts_with(&format!("drain {drained}; restarted on "))
            && note.ends_with("from its start (it is not migratable)"),
        "{row}"
    );
    assert_eq!(row["restarts"], 1, "{row}");
    // Its output starts again from the top, and `tern logs` says so.
    up.wait_for("plain's note", Duration::from_secs(30), || {
        let logs = up.verb(&["logs", "plain"]);
        logs.stderr
            .contains("-- tern: plain started again from its start on ")
            .then_some(())
    });
    for name in ["live", "plain"] {
        let row = up.app(name).expect("listed");
        assert_ne!(row["node"], drained.as_str(), "{row}");
    }
    let e = up.verb(&["explain", "live", "--why-not", &drained]);
    assert!(e.succeeds().contains("drained"), "{e:?}");
    up.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_control_plane_killed_and_restarted_leaves_running_apps_alone() {
    let d = scratch();
    let server = tern_cluster::backbone::NatsServer::start(&d.path().join("nats"), 0)
        .await
        .expect("nats-server");
    let addr = free_addr();
    let api = format!("http://{addr}");
    let controller = || crate::support::spawn_controller(d.path(), &server, &addr);
    let mut first = controller();
    let state = d.path().join("edge");
    let _edge = crate::support::spawn_node(
        d.path(),
        &server,
        "edge",
        &["--tier", "edge", "--state", state.to_str().expect("utf-8")],
    );
    let steps = guest("steps");
    let reference = tern(d.path())
        .arg("run")
        .arg(&steps)
        .args(["150", "60000000"])
        .run();
    let m = write_app(
        d.path(),
        "steady",
        &steps,
        "name = \"steady\"\nargs = [\"150\", \"60000000\"]\nmigratable = true\ncheckpoint_every = \"1s\"\n",
    );
    let verb = |args: &[&str]| {
        tern(d.path())
            .args(args)
            .args(["--api", &api])
            .env("TERN_TOKEN", TOKEN)
            .run()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while verb(&["deploy", m.to_str().expect("utf-8")]).code != Some(0) {
        assert!(Instant::now() < deadline, "never deployed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let bb = server.backbone().await.expect("backbone");
    let status = || async {
        bb.status("steady")
            .await
            .expect("status")
            .map(|s| (s.incarnation, s.state.name().to_owned()))
    };
    while status().await.is_none_or(|(_, s)| s != "running") {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node's heartbeats carry what its instance uses: CPU time, and memory.
    let measuring = Instant::now();
    loop {
        let r = verb(&["nodes", "--json"]);
        let nodes: Vec<tern_cluster::control::NodeView> =
            serde_json::from_str(r.succeeds()).expect("nodes JSON");
        let load = nodes
            .iter()
            .find(|n| n.node.name == "edge")
            .map(|n| n.node.load);
        if load.is_some_and(|l| l.cpu > 0.05 && l.used > 1 << 20 && l.instances == 1) {
            break;
        }
        assert!(
            measuring.elapsed() < Duration::from_secs(20),
            "load never reported: {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Killed: the app runs on without it.
    first.kill().expect("kill");
    let _ = first.wait();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status().await, Some((1, "running".to_owned())));
    let _second = controller();
    let done = loop {
        let r = verb(&["ps", "--json"]);
        if r.code == Some(0) {
            let v: Value = serde_json::from_str(&r.stdout).expect("JSON");
            if v[0]["state"] == "exited" {
                break v[0].clone();
            }
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(120),
            "{r:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["incarnation"], 1, "never placed again: {done}");
    assert_eq!(done["restarts"], 0, "{done}");
    assert_eq!(done["code"], 3, "{done}");
    assert_eq!(verb(&["logs", "steady"]).succeeds(), reference.stdout);
}
