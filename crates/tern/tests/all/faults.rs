//! The continuum through its own faults, with both cores kept busy: nats-server
//! stalled and killed, and a node process killed. Each checks that the app ran exactly
//! once (one incarnation, no restart) and that `tern logs` is identical to an
//! uninterrupted run.

use std::time::Duration;

use crate::continuum::{Up, write_app};
use crate::support::{guest, scratch, signal_pid, tern};

/// Processes that keep `n` cores busy until dropped.
pub(crate) struct Busy(Vec<std::process::Child>);

impl Busy {
    pub(crate) fn cores(n: usize) -> Busy {
        Busy(
            (0..n)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pid of the nats-server of `up`.
fn nats_pid(up: &Up) -> u32 {
    let state = up.state.display().to_string();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("nats-server")
                && cmd.contains(&state)
                && let Ok(pid) = entry.file_name().to_string_lossy().parse()
            {
                return pid;
            }
        }
    }
    panic!("no nats-server under {state}");
}

/// Deploys `steps` (migratable, checkpointed every second) on `up` and waits until it
/// has printed a few lines; returns the output of an uninterrupted run.
fn deploy_steps(up: &Up, dir: &std::path::Path, args: [&str; 2]) -> String {
    let steps = guest("steps");
    let reference = tern(dir).arg("run").arg(&steps).args(args).run();
    assert_eq!(reference.code, Some(3), "{reference:?}");
    let m = write_app(
        dir,
        "steady",
        &steps,
        &format!(
            "name = \"steady\"\nargs = [\"{}\", \"{}\"]\nmigratable = true\ncheckpoint_every = \"1s\"\n",
            args[0], args[1]
        ),
    );
    up.verb(&["deploy", m.to_str().expect("utf-8")]).succeeds();
    up.wait_for("a few steps", Duration::from_secs(120), || {
        (up.verb(&["logs", "steady"]).stdout.lines().count() >= 3).then_some(())
    });
    reference.stdout
}

/// The app ran to its end once: one incarnation, no restart, and its output whole.
fn ran_once(up: &Up, reference: &str) {
    let done = up.wait_state("steady", "exited", Duration::from_secs(300));
    assert_eq!(done["incarnation"], 1, "placed again: {done}");
    assert_eq!(done["restarts"], 0, "{done}");
    assert_eq!(done["code"], 3, "{done}");
    assert_eq!(up.verb(&["logs", "steady"]).succeeds(), reference);
}

/// Stops process `pid` (SIGSTOP) for ten seconds, then lets it go on.
fn stall_for_ten_seconds(pid: u32) {
    signal_pid(pid, "-STOP");
    // The fault's length, not a wait for a state.
    std::thread::sleep(Duration::from_secs(10));
    signal_pid(pid, "-CONT");
}

/// Waits until `tern nodes` lists all three of `up`'s nodes.
fn three_nodes(up: &Up) {
    up.wait_for("three nodes", Duration::from_secs(120), || {
        let r = up.verb(&["nodes", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).ok()?;
        (v.as_array()?.len() == 3).then_some(())
    });
}

#[test]
fn a_backbone_stalled_for_ten_seconds_stops_no_app_and_restarts_none() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let _busy = Busy::cores(2);
    let reference = deploy_steps(&up, d.path(), ["40", "40000000"]);
    stall_for_ten_seconds(nats_pid(&up));
    ran_once(&up, &reference);
    // Every node is still there, and none was taken for lost.
    three_nodes(&up);
    let stderr = up.stop();
    assert!(!stderr.contains("exited ("), "nothing ended: {stderr}");
}

/// The control plane stalls (SIGSTOP of `tern up`, which runs it): the nodes go on
/// with their apps, and once it resumes it takes none of the nodes it heard nothing
/// from meanwhile for lost (its own silence is not theirs).
#[test]
fn a_control_plane_stalled_for_ten_seconds_stops_no_app_and_loses_no_node() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let _busy = Busy::cores(2);
    let reference = deploy_steps(&up, d.path(), ["40", "40000000"]);
    stall_for_ten_seconds(up.up.id());
    ran_once(&up, &reference);
    three_nodes(&up);
    let stderr = up.stop();
    assert!(!stderr.contains("is lost"), "no node was lost: {stderr}");
}

#[test]
fn a_backbone_killed_is_started_again_and_a_node_killed_too_with_no_app_lost() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let _busy = Busy::cores(2);
    let reference = deploy_steps(&up, d.path(), ["40", "40000000"]);
    signal_pid(nats_pid(&up), "-KILL");
    ran_once(&up, &reference);
    // A node process that dies is started again and joins again, and runs nothing
    // that ended already.
    let node = up.app("steady").expect("steady")["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let pid = up.node_pid(&node);
    signal_pid(pid, "-KILL");
    up.wait_for("the node started again", Duration::from_secs(120), || {
        up.try_node_pid(&node).filter(|&p| p != pid).map(|_| ())
    });
    three_nodes(&up);
    let after = up.app("steady").expect("steady");
    assert_eq!(
        (&after["state"], &after["restarts"], &after["incarnation"]),
        (&"exited".into(), &0.into(), &1.into()),
        "{after}"
    );
    assert_eq!(up.verb(&["logs", "steady"]).succeeds(), reference);
    let stderr = up.stop();
    assert!(
        stderr.contains("nats-server exited") && stderr.contains("nats-server started again"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("node {node} exited"))
            && stderr.contains(&format!("node {node} started again")),
        "{stderr}"
    );
}

#[test]
fn a_node_killed_and_started_again_resumes_its_app_from_its_checkpoint() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let _busy = Busy::cores(1);
    let reference = deploy_steps(&up, d.path(), ["30", "40000000"]);
    up.wait_for("a checkpoint", Duration::from_secs(60), || {
        up.app("steady")?["checkpoint_age_s"]
            .is_number()
            .then_some(())
    });
    let node = up.app("steady").expect("steady")["node"]
        .as_str()
        .expect("node")
        .to_owned();
    signal_pid(up.node_pid(&node), "-KILL");
    let resumed = up.wait_for("steady running again", Duration::from_secs(120), || {
        up.app("steady")
            .filter(|a| a["restarts"] == 1 && a["state"] == "running")
    });
    let note = resumed["note"].as_str().expect("note");
    assert!(
        note.starts_with(&format!(
            "node {node} restarted; resumed from its checkpoint of"
        )),
        "{resumed}"
    );
    assert_eq!(resumed["node"], node.as_str(), "{resumed}");
    let done = up.wait_state("steady", "exited", Duration::from_secs(300));
    assert_eq!(
        (&done["incarnation"], &done["code"]),
        (&1.into(), &3.into()),
        "{done}"
    );
    assert_eq!(up.verb(&["logs", "steady"]).succeeds(), reference);
    up.stop();
}

#[test]
fn a_second_tern_up_on_the_same_state_is_refused() {
    let d = scratch();
    let state = d.path().join("state");
    let up = Up::start(d.path(), &state);
    let r = tern(d.path())
        .args(["up", "--listen", &crate::support::free_addr(), "--state"])
        .arg(&state)
        .run();
    r.fails_with(1, "another `tern up` (pid ");
    // The first one is untouched.
    up.stop();
}

/// The instance processes of `app` on node `node` of `up` (with `running`, only those
/// not stopped).
fn instances_of(up: &Up, node: &str, app: &str, running: bool) -> usize {
    let needle = up
        .state
        .join("nodes")
        .join(node)
        .join("apps")
        .join(app)
        .display()
        .to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            let stopped = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|st| {
                st.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            });
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                c.contains(" instance ") && c.contains(&needle)
            }) && !(running && stopped)
        })
        .count()
}

#[test]
fn a_node_that_hangs_and_comes_back_runs_nothing_twice_and_repeats_no_output() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let _busy = Busy::cores(1);
    let reference = deploy_steps(&up, d.path(), ["40", "40000000"]);
    up.wait_for("a checkpoint", Duration::from_secs(60), || {
        up.app("steady")?["checkpoint_age_s"]
            .is_number()
            .then_some(())
    });
    let node = up.app("steady").expect("steady")["node"]
        .as_str()
        .expect("node")
        .to_owned();
    // The node's agent hangs: its instance stops with it (it would be a second copy
    // once the app is restored elsewhere); declared lost, the app is restored elsewhere.
    let pid = up.node_pid(&node);
    signal_pid(pid, "-STOP");
    up.wait_for(
        "the node's copy stopped with it",
        Duration::from_secs(30),
        || (instances_of(&up, &node, "steady", true) == 0).then_some(()),
    );
    assert_eq!(instances_of(&up, &node, "steady", false), 1);
    up.wait_for(
        "steady restored elsewhere",
        Duration::from_secs(120),
        || {
            up.app("steady")
                .filter(|a| a["node"] != node.as_str() && a["state"] == "running")
        },
    );
    // It comes back: its copy of the app is fenced and ended, and its output is not
    // published after the new one's.
    signal_pid(pid, "-CONT");
    up.wait_for("the stale copy gone", Duration::from_secs(60), || {
        (instances_of(&up, &node, "steady", false) == 0).then_some(())
    });
    let done = up.wait_state("steady", "exited", Duration::from_secs(300));
    assert_eq!(
        (&done["code"], &done["incarnation"]),
        (&3.into(), &2.into()),
        "{done}"
    );
    assert_eq!(up.verb(&["logs", "steady"]).succeeds(), reference);
    up.stop();
}

#[test]
fn a_node_that_hangs_briefly_keeps_its_app_and_lets_it_go_on() {
    let d = scratch();
    let up = Up::start(d.path(), &d.path().join("state"));
    let reference = deploy_steps(&up, d.path(), ["30", "40000000"]);
    let node = up.app("steady").expect("steady")["node"]
        .as_str()
        .expect("node")
        .to_owned();
    let pid = up.node_pid(&node);
    signal_pid(pid, "-STOP");
    up.wait_for(
        "the node's copy stopped with it",
        Duration::from_secs(30),
        || (instances_of(&up, &node, "steady", true) == 0).then_some(()),
    );
    // Back well before the control plane would take it for lost: the app is still
    // its own, and goes on there.
    signal_pid(pid, "-CONT");
    up.wait_for("the copy going on", Duration::from_secs(30), || {
        (instances_of(&up, &node, "steady", true) == 1).then_some(())
    });
    ran_once(&up, &reference);
    up.stop();
}
