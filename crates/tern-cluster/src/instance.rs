//! One instance of an app, in a process of its own (`tern instance SPEC`) that its node
//! agent starts: a guest that traps, exhausts its memory or is killed takes no agent
//! down with it, and a node agent killed with SIGKILL takes its instances with it (the
//! agent asks the kernel to kill them when it dies), so none outlives its node.
//!
//! The guest's stdout and stderr are the process's own, which the agent reads. The
//! agent and the instance speak over a Unix socket, one JSON object a line:
//!
//! | from | line | meaning |
//! | --- | --- | --- |
//! | agent | `{"do":"checkpoint"}` | stop at the next safe point, write a checkpoint bundle, carry on |
//! | agent | `{"do":"stop"}` | the same, then end (the node is stopping) |
//! | agent | `{"do":"ack"}` | the checkpoint is taken care of: the guest may run on |
//! | agent | `{"do":"migrate","to":ADDR}` | live-migrate the guest to the instance listening at ADDR |
//! | instance | `{"event":"started"}` | the guest runs (compiled, and restored if it resumes) |
//! | instance | `{"event":"listening","addr":…}` | (an instance that receives a migration) where it waits for it |
//! | instance | `{"event":"checkpoint","path":…}` | a bundle is ready; the guest waits for the ack |
//! | instance | `{"event":"checkpoint-failed","reason":…}` | none was written; the guest runs on |
//! | instance | `{"event":"migrated",…}` / `{"event":"migration-failed","reason":…,"ended":…}` | the destination has the guest (this instance ends) / the guest runs on here, or (`ended`) it ended first |
//! | instance | `{"event":"ended",…}` | the guest exited (`code`), failed (`reason`), stopped for good (`stopped`) or moved (`migrated`) |
//!
//! The guest waits for the ack so that its node can count the stdout bytes written
//! before the checkpoint while no more can come: a restore from it then skips the
//! output the stream already holds, and nothing is repeated.
//!
//! A checkpoint bundle is a tar archive of the snapshot (`snapshot`) and of each
//! volume's files (`volumes/N/…`, N the volume's index in the spec), taken while the
//! guest is stopped, so the files are those the snapshot's open files expect.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_runtime::{
    DirAccess, Engine, EngineKind, EngineOptions, Limits, Outcome, Policy, Preopen,
};
use tern_snapshot::{
    Captured, Checkpoint, Migratable, Outbound, Placement, Rewriter, RunEnd, Snapshot, Trigger,
};

/// Everything an instance process needs, written by its agent as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub app: String,
    pub module: PathBuf,
    /// argv, argv\[0\] included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Each volume: the host directory, and the guest path it is preopened at.
    pub volumes: Vec<(PathBuf, String)>,
    /// Bytes of linear memory the guest may use.
    pub memory: u64,
    #[serde(with = "crate::model::engine_name")]
    pub engine: EngineKind,
    pub migratable: bool,
    /// A checkpoint bundle to resume from instead of starting afresh.
    pub restore: Option<PathBuf>,
    /// Instead of starting, listen here (HOST:PORT, port 0 for any) for the live
    /// migration of the guest from another node.
    #[serde(default)]
    pub receive: Option<String>,
    /// Where checkpoint bundles are written (each replaces the last).
    pub checkpoint: PathBuf,
    /// The agent's control socket.
    pub control: PathBuf,
    /// Where migratable rewrites of modules are cached.
    pub cache: Option<PathBuf>,
}

/// A line from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Command {
    Checkpoint,
    Stop,
    Ack,
    Migrate { to: String },
}

/// A line from the instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The guest runs (its module compiled, its state restored).
    Started,
    Listening {
        addr: String,
    },
    Checkpoint {
        path: PathBuf,
        pages: u64,
    },
    CheckpointFailed {
        reason: String,
    },
    Migrated {
        downtime_ms: f64,
        total_ms: f64,
        rounds: u32,
        bytes: u64,
        /// Why the guest stopped when it did, when the pre-copy did not converge.
        #[serde(default)]
        precopy: String,
    },
    MigrationFailed {
        reason: String,
        /// The guest ended before it could be migrated.
        #[serde(default)]
        ended: bool,
    },
    Ended(Ended),
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ended {
    /// The guest exited with this code.
    Exited { code: i32 },
    /// The guest trapped, hit a limit, or could not start or be restored.
    Failed { reason: String },
    /// Stopped after a checkpoint, to be resumed from it.
    Stopped,
    /// Moved to another node by a live migration.
    Migrated,
}

/// How long the guest waits for its agent's ack of a checkpoint.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// Room for the guest's stack beside the host's own frames on the guest thread.
const HOST_STACK: usize = 8 << 20;

/// Runs the instance `spec_path` describes, reporting to its agent, and returns the
/// process's exit status: the guest's code, 125 for a failure, 0 when stopped.
/// How often an instance looks at whether its agent is stopped.
const AGENT_WATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// An instance whose agent is stopped (SIGSTOP: a hung or frozen node, cut off from
/// the continuum) stops itself too, at once: the control plane will place its app
/// elsewhere once the node has been silent for `--lost-after`, and a copy left running
/// here would be a second copy of the app. The agent, when it goes on, lets it go on
/// only if the app is still its own (otherwise it ends it). A thread reads the state
/// of the parent process in `/proc`; an agent that dies takes the instance with it
/// (`die_with_parent`).
fn pause_with_agent() {
    let parent = std::os::unix::process::parent_id();
    let _ = std::thread::Builder::new()
        .name("agent-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(AGENT_WATCH);
                if process_stopped(parent) == Some(true) {
                    let me = rustix::process::getpid();
                    let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
                }
            }
        });
}

/// Whether process `pid` is stopped (state `T` or `t` in `/proc/PID/stat`); `None`
/// when it cannot be read.
pub(crate) fn process_stopped(pid: u32) -> Option<bool> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some(matches!(state, "T" | "t"))
}

pub fn run(spec_path: &Path) -> i32 {
    let spec: InstanceSpec = match std::fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern instance: {}: {e}", spec_path.display());
            return 2;
        }
    };
    let control = match UnixStream::connect(&spec.control) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "tern instance: control socket {}: {e}",
                spec.control.display()
            );
            return 2;
        }
    };
    let link = Link::new(control);
    pause_with_agent();
    let ended = std::thread::Builder::new()
        .name("guest".into())
        .stack_size(tern_runtime::DEFAULT_MAX_STACK + HOST_STACK)
        .spawn({
            let link = link.clone();
            move || guest(&spec, &link)
        })
        .map_err(|e| e.to_string())
        .and_then(|t| t.join().map_err(|_| "the guest thread panicked".to_owned()))
        .unwrap_or_else(|e| Ended::Failed { reason: e });
    // A migration's last word (its statistics) goes out before the end.
    let moving = link.moving.lock().ok().and_then(|mut m| m.take());
    if let Some(m) = moving {
        let _ = m.join();
    }
    let ended = match ended {
        // Stopped, though no one asked it to stop: a migration stopped it.
        Ended::Stopped if !link.stopping.load(Ordering::SeqCst) => Ended::Migrated,
        e => e,
    };
    let status = match &ended {
        Ended::Exited { code } => *code,
        Ended::Failed { .. } => 125,
        Ended::Stopped | Ended::Migrated => 0,
    };
    link.send(&Event::Ended(ended));
    status
}

/// The control socket, shared by the guest thread and the thread that reads commands.
#[derive(Clone)]
struct Link {
    out: Arc<Mutex<UnixStream>>,
    trigger: Trigger,
    /// Stop after the next checkpoint.
    stopping: Arc<AtomicBool>,
    acks: Arc<Mutex<mpsc::Receiver<()>>>,
    /// Migrations of the guest, once it runs.
    outbound: Arc<Mutex<Option<Outbound>>>,
    /// The thread of the migration under way.
    moving: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Link {
    fn new(stream: UnixStream) -> Link {
        let trigger = Trigger::new();
        let stopping = Arc::new(AtomicBool::new(false));
        let (ack_tx, ack_rx) = mpsc::channel();
        let reader = stream.try_clone();
        let link = Link {
            out: Arc::new(Mutex::new(stream)),
            trigger: trigger.clone(),
            stopping: stopping.clone(),
            acks: Arc::new(Mutex::new(ack_rx)),
            outbound: Arc::new(Mutex::new(None)),
            moving: Arc::new(Mutex::new(None)),
        };
        if let Ok(reader) = reader {
            let this = link.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Command>(&line) {
                        Ok(Command::Checkpoint) => trigger.fire(),
                        Ok(Command::Stop) => {
                            stopping.store(true, Ordering::SeqCst);
                            trigger.fire();
                        }
                        Ok(Command::Ack) => {
                            let _ = ack_tx.send(());
                        }
                        Ok(Command::Migrate { to }) => this.migrate(to),
                        Err(e) => eprintln!("tern instance: bad command {line:?}: {e}"),
                    }
                }
            });
        }
        link
    }

    fn send(&self, event: &Event) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        if let Ok(mut out) = self.out.lock() {
            let _ = out.write_all(&line);
        }
    }

    /// Live-migrates the guest to `to`, on a thread of its own, and reports how it went.
    fn migrate(&self, to: String) {
        let outbound = self.outbound.lock().ok().and_then(|o| o.clone());
        let Some(outbound) = outbound else {
            self.send(&Event::MigrationFailed {
                reason: "the guest is not running yet".into(),
                ended: false,
            });
            return;
        };
        let link = self.clone();
        let thread = std::thread::spawn(move || {
            let event = match outbound.migrate(&to, &|_| {}) {
                Ok(stats) => Event::Migrated {
                    downtime_ms: stats.downtime.as_secs_f64() * 1e3,
                    total_ms: stats.total.as_secs_f64() * 1e3,
                    rounds: stats.rounds,
                    bytes: stats.bytes_sent,
                    precopy: match stats.precopy {
                        tern_snapshot::PrecopyEnd::Converged => String::new(),
                        other => other.to_string(),
                    },
                },
                // A guest that ends hangs up the line, which the migration sees first.
                Err(_) if outbound.guest_has_ended() => Event::MigrationFailed {
                    reason: "the guest finished before it could be migrated".into(),
                    ended: true,
                },
                Err(e) => Event::MigrationFailed {
                    reason: e.to_string(),
                    ended: false,
                },
            };
            link.send(&event);
        });
        if let Ok(mut m) = self.moving.lock()
            && let Some(previous) = m.replace(thread)
        {
            let _ = previous.join();
        }
    }

    /// Waits for the agent's ack of a checkpoint; `false` when none came.
    fn acked(&self) -> bool {
        self.acks
            .lock()
            .is_ok_and(|acks| acks.recv_timeout(ACK_WAIT).is_ok())
    }
}

fn guest(spec: &InstanceSpec, link: &Link) -> Ended {
    match try_guest(spec, link) {
        Ok(e) => e,
        Err(reason) => Ended::Failed { reason },
    }
}

fn try_guest(spec: &InstanceSpec, link: &Link) -> Result<Ended, String> {
    let wasm = std::fs::read(&spec.module)
        .map_err(|e| format!("cannot read module {}: {e}", spec.module.display()))?;
    let engine = Engine::new(EngineOptions {
        kind: spec.engine,
        ..EngineOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let limits = Limits {
        max_memory: Some(spec.memory),
        ..Limits::default()
    };
    let preopens: Vec<Preopen> = spec
        .volumes
        .iter()
        .map(|(host, guest)| Preopen {
            host: host.clone(),
            guest: guest.clone(),
            access: DirAccess::ReadWrite,
        })
        .collect();
    let policy = Policy {
        args: spec.args.clone(),
        env: spec.env.clone(),
        preopens: preopens.clone(),
        inherit_stdio: true,
    };
    if !spec.migratable {
        let module =
            wasmtime::Module::new(engine.wasmtime(), &wasm).map_err(|e| format!("{e:#}"))?;
        let program = tern_runtime::Program::new(&engine, module).map_err(|e| e.to_string())?;
        link.send(&Event::Started);
        let outcome = program.run(&policy, &limits).map_err(|e| e.to_string())?;
        return Ok(ended(outcome));
    }
    let rewriter = Rewriter::new(spec.cache.clone());
    let outbound = Outbound::new(preopens.clone(), &link.trigger);
    if let Ok(mut o) = link.outbound.lock() {
        *o = Some(outbound.clone());
    }
    let on_checkpoint = |captured: Captured<'_>| checkpoint(spec, link, &captured);
    if let Some(addr) = &spec.receive {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen for the migration on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        link.send(&Event::Listening {
            addr: addr.to_string(),
        });
        // Only the app's own module, the one its record names and the agent laid out,
        // may arrive: anyone who reaches the port could bring another.
        let digest = tern_runtime::digest(&wasm);
        let end = tern_snapshot::receive_with(
            listener,
            &engine,
            &rewriter,
            Some(&digest),
            &preopens,
            &limits,
            |line| tracing::debug!("{line}"),
            &link.trigger,
            |m| outbound.route(m, on_checkpoint),
            // Only once the migration has committed does the guest run here.
            || link.send(&Event::Started),
        )
        .map_err(|e| e.to_string());
        outbound.guest_ended();
        return Ok(match end? {
            RunEnd::Finished(outcome) => ended(outcome),
            RunEnd::Stopped => Ended::Stopped,
        });
    }
    let migratable = Migratable::new(&engine, &rewriter, &wasm).map_err(|e| e.to_string())?;
    let on_checkpoint = outbound.route(&migratable, on_checkpoint);
    let end = match &spec.restore {
        None => {
            link.send(&Event::Started);
            migratable.run(&policy, &limits, &link.trigger, on_checkpoint)
        }
        Some(bundle) => {
            let snapshot = Snapshot::decode(&unpack(bundle, &spec.volumes)?)
                .map_err(|e| format!("checkpoint {}: {e}", bundle.display()))?;
            migratable.restore(
                &snapshot,
                &Placement {
                    dirs: &preopens,
                    inherit_stdio: true,
                    skip_stdin: false,
                    limits: &limits,
                },
                &link.trigger,
                || {
                    link.send(&Event::Started);
                    Ok(())
                },
                on_checkpoint,
            )
        }
    }
    .map_err(|e| e.to_string());
    outbound.guest_ended();
    Ok(match end? {
        RunEnd::Finished(outcome) => ended(outcome),
        RunEnd::Stopped => Ended::Stopped,
    })
}

fn ended(outcome: Outcome) -> Ended {
    match outcome {
        Outcome::Exited(code) => Ended::Exited { code },
        Outcome::Trapped { message, .. } => Ended::Failed {
            reason: format!("trapped: {message}"),
        },
        Outcome::LimitExceeded(l) => Ended::Failed {
            reason: l.to_string(),
        },
        Outcome::BrokenPipe => Ended::Failed {
            reason: "its output was closed".into(),
        },
    }
}

/// Writes a bundle of `captured` and waits for the agent to take it.
fn checkpoint(spec: &InstanceSpec, link: &Link, captured: &Captured<'_>) -> Checkpoint {
    let snapshot = captured.to_snapshot();
    let written = snapshot
        .encode()
        .map_err(|e| e.to_string())
        .and_then(|bytes| pack(&spec.checkpoint, &bytes, &spec.volumes));
    let stopping = link.stopping.load(Ordering::SeqCst);
    match written {
        Ok(()) => {
            link.send(&Event::Checkpoint {
                path: spec.checkpoint.clone(),
                pages: u64::from(snapshot.meta.memory_pages),
            });
            if !link.acked() {
                eprintln!("tern instance: no ack of the checkpoint within {ACK_WAIT:?}");
            }
            if stopping {
                Checkpoint::Stop
            } else {
                Checkpoint::Continue
            }
        }
        Err(reason) => {
            link.send(&Event::CheckpointFailed { reason });
            // A stop without a checkpoint would lose the guest's progress: it carries
            // on, and the agent decides.
            Checkpoint::Continue
        }
    }
}

/// Writes the bundle of `snapshot` and `volumes` to `path`, atomically.
pub fn pack(path: &Path, snapshot: &[u8], volumes: &[(PathBuf, String)]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("writing checkpoint {}: {e}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    {
        let mut tar = tar::Builder::new(std::io::BufWriter::new(tmp.as_file()));
        tar.follow_symlinks(false);
        let mut header = tar::Header::new_gnu();
        header.set_size(snapshot.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, "snapshot", snapshot)
            .map_err(err)?;
        for (i, (host, _)) in volumes.iter().enumerate() {
            tar.append_dir_all(format!("volumes/{i}"), host)
                .map_err(err)?;
        }
        tar.into_inner().map_err(err)?.flush().map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Reads the bundle at `path`: its volumes' files go into `volumes`' host directories
/// (which must be empty), and its snapshot's bytes are returned.
///
/// # Errors
/// A bundle that cannot be read, holds a path outside its volumes, or no snapshot.
pub fn unpack(path: &Path, volumes: &[(PathBuf, String)]) -> Result<Vec<u8>, String> {
    let err = |e: &dyn std::fmt::Display| format!("checkpoint {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| err(&e))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut snapshot = None;
    for entry in archive.entries().map_err(|e| err(&e))? {
        let mut entry = entry.map_err(|e| err(&e))?;
        let name = entry.path().map_err(|e| err(&e))?.into_owned();
        if name == Path::new("snapshot") {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).map_err(|e| err(&e))?;
            snapshot = Some(bytes);
            continue;
        }
        let mut parts = name.components();
        let (Some(Component::Normal(top)), Some(Component::Normal(index))) =
            (parts.next(), parts.next())
        else {
            return Err(err(&format!("unexpected entry {}", name.display())));
        };
        let rest = parts.as_path();
        let volume = index.to_str().and_then(|i| i.parse::<usize>().ok());
        let Some((host, _)) = volume
            .and_then(|i| volumes.get(i))
            .filter(|_| top == "volumes")
        else {
            return Err(err(&format!(
                "entry {} names no volume of the app",
                name.display()
            )));
        };
        if rest
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(err(&format!("entry {} leaves its volume", name.display())));
        }
        if rest.as_os_str().is_empty() {
            continue;
        }
        let target = host.join(rest);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(&e))?;
        }
        if entry.header().entry_type().is_symlink() || entry.header().entry_type().is_hard_link() {
            return Err(err(&format!("entry {} is a link", name.display())));
        }
        entry.unpack(&target).map_err(|e| err(&e))?;
    }
    snapshot.ok_or_else(|| err(&"it holds no snapshot"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_holds_the_volumes_and_refuses_escapes() {
        let dir = tempfile::tempdir().expect("tmp");
        let vol = dir.path().join("vol");
        std::fs::create_dir_all(vol.join("sub")).expect("mkdir");
        std::fs::write(vol.join("sub/a.txt"), b"hello").expect("write");
        let bundle = dir.path().join("b.tar");
        let volumes = vec![(vol, "/data".to_owned())];
        pack(&bundle, b"not a snapshot", &volumes).expect("pack");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("mkdir");
        let snapshot = unpack(&bundle, &[(out.clone(), "/data".into())]).expect("unpack");
        assert_eq!(snapshot, b"not a snapshot");
        assert_eq!(
            std::fs::read(out.join("sub/a.txt")).expect("unpacked"),
            b"hello"
        );

        // A bundle whose entry climbs out of its volume is refused, and writes nothing
        // outside it.
        let evil = dir.path().join("evil.tar");
        {
            let mut tar = tar::Builder::new(std::fs::File::create(&evil).expect("create"));
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, "volumes/0/x", &b"abc"[..])
                .expect("append");
            // `append_data` refuses `..`; write the raw name as a hostile peer would.
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().expect("gnu").name[..14].copy_from_slice(b"volumes/0/../y");
            h.set_size(3);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append(&h, &b"abc"[..]).expect("append");
            tar.finish().expect("finish");
        }
        let e = unpack(&evil, &[(out.clone(), "/data".into())]).expect_err("escape");
        assert!(e.contains("leaves its volume"), "{e}");
        assert!(!out.join("../y").exists());
    }
}
