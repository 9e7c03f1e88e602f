//! Test support: building C guests and running the real `tern` binary hermetically.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiler for guests: `$TERN_CLANG` or clang-19.
fn clang() -> String {
    std::env::var("TERN_CLANG").unwrap_or_else(|_| "clang-19".into())
}

static BUILD: Mutex<()> = Mutex::new(());

/// Builds `guests/<name>.c` to Wasm (once per source content) and returns its path.
///
/// Compiles with -O2 and links without -O so that clang does not run Binaryen's
/// wasm-opt after linking, which drops the name section the backtrace tests read.
pub fn guest(name: &str) -> PathBuf {
    let src = repo().join("guests").join(format!("{name}.c"));
    let text = std::fs::read(&src).unwrap_or_else(|e| panic!("reading {}: {e}", src.display()));
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    let out = dir.join(format!("{name}-{:016x}.wasm", h.finish()));
    let _lock = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if out.exists() {
        return out;
    }
    // Test processes may build the same guest at once: each builds in a directory of its
    // own under the same file names, so the outputs are byte-identical and the final
    // rename is atomic whoever wins.
    let work = dir.join(format!("build-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("creating guest build dir");
    let obj = work.join(format!("{name}.o"));
    let tmp = work.join(format!("{name}.wasm"));
    let sysroot = ["--target=wasm32-wasi", "--sysroot=/usr"];
    run_clang(
        Command::new(clang())
            .args(sysroot)
            .args(["-O2", "-Wall", "-c"])
            .arg(&src)
            .arg("-o")
            .arg(&obj),
    );
    run_clang(
        Command::new(clang())
            .args(sysroot)
            .arg(&obj)
            .arg("-o")
            .arg(&tmp),
    );
    std::fs::rename(&tmp, &out).expect("publishing guest");
    let _ = std::fs::remove_dir_all(&work);
    out
}

fn run_clang(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {}: {e}; install the toolchain with scripts/setup.sh",
            clang()
        )
    });
    assert!(
        out.status.success(),
        "clang failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `tern` invocation with its own artifact cache and a clean environment.
pub struct Tern {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Tern {
    pub fn new(cache: &Path) -> Tern {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.env_clear()
            .env("TERN_CACHE_DIR", cache)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        Tern { cmd, stdin: None }
    }

    /// [`Tern::new`], run inside network namespace `ns` (made by `ip netns add`): a
    /// second machine, for a test. `nsenter` enters the network namespace alone (`ip
    /// netns exec` also remounts `/`, which a chroot does not allow).
    pub fn in_namespace(cache: &Path, ns: &str) -> Tern {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg(env!("CARGO_BIN_EXE_tern"))
            .env_clear()
            .env("TERN_CACHE_DIR", cache)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        Tern { cmd, stdin: None }
    }

    pub fn args<I, S>(mut self, args: I) -> Tern
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Tern {
        self.cmd.arg(arg);
        self
    }

    /// Passes these variables of the test's environment through, when set.
    pub fn inherit(mut self, vars: &[&str]) -> Tern {
        for v in vars {
            if let Some(value) = std::env::var_os(v) {
                self.cmd.env(v, value);
            }
        }
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Tern {
        self.cmd.env(k, v);
        self
    }

    pub fn stdin(mut self, data: &[u8]) -> Tern {
        self.stdin = Some(data.to_vec());
        self
    }

    /// Starts `tern` with stdin, stdout and stderr piped, for a test that talks to it
    /// while it runs (reads its output as it comes, signals it).
    pub fn spawn(mut self) -> std::process::Child {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawning tern")
    }

    /// Starts a daemon (`tern node`, `tern controller`, `tern up`) with its stdout and
    /// stderr appended to `log`: a pipe nobody reads would fill and stall the daemon's
    /// logging, and with it the daemon, on a long test. [`log_tail`] reads it back for
    /// a failure message.
    pub fn spawn_logged(mut self, log: &Path) -> std::process::Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let err = file.try_clone().expect("cloning the log file");
        self.cmd
            .stdout(file)
            .stderr(err)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning tern")
    }

    pub fn run(mut self) -> Run {
        use std::io::Write as _;
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawning tern");
        let mut pipe = child.stdin.take().expect("stdin piped");
        // Fed from a thread, so that a guest writing much while it reads never blocks
        // on a full stdout pipe; a guest that stops reading early (a checkpoint) closes
        // the pipe, which is not a failure.
        let data = self.stdin.take();
        let feeder = std::thread::spawn(move || {
            if let Some(data) = data {
                let _ = pipe.write_all(&data);
            }
        });
        let out = child.wait_with_output().expect("waiting for tern");
        feeder.join().expect("stdin feeder");
        Run::from(out)
    }
}

/// What a `tern` process did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        let run = Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        // Whatever the guest or input did, the host process ends by itself, never by a
        // signal and never by a panic.
        assert!(run.code.is_some(), "tern was killed by a signal: {run:?}");
        assert!(
            !run.stderr.contains("panicked"),
            "tern panicked: {}",
            run.stderr
        );
        run
    }
}

impl Run {
    /// Asserts the exit code and that stderr is exactly one `error: …` line containing
    /// `needle`; returns that line.
    pub fn fails_with(&self, code: i32, needle: &str) -> &str {
        assert_eq!(self.code, Some(code), "{self:?}");
        let line = self.stderr.trim_end();
        assert!(
            !line.contains('\n'),
            "expected one line on stderr, got: {}",
            self.stderr
        );
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains(needle), "expected {needle:?} in {line:?}");
        line
    }

    pub fn succeeds(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:?}");
        &self.stdout
    }
}

/// A scratch directory that holds the artifact cache (`cache/`) and test files.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("creating a temp dir")
}

/// `tern` with the cache under `dir`.
pub fn tern(dir: &Path) -> Tern {
    Tern::new(&dir.join("cache"))
}

/// Sends `sig` (`-TERM`, `-USR1` …) to `child` with the shell's own `kill`: minimal
/// machines have no kill program.
pub fn signal(child: &std::process::Child, sig: &str) {
    signal_pid(child.id(), sig);
}

/// Sends `sig` (`-STOP`, `-KILL` …) to process `pid`, with the shell's `kill` (a
/// minimal machine has no `/bin/kill`).
pub fn signal_pid(pid: u32, sig: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("kill {sig} {pid}"))
        .status()
        .expect("sh")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A loopback address nothing listens on (a port just freed).
pub fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string()
}

/// A spawned process killed when the test ends, even by a failed assertion, so no
/// agent or control plane outlives its test.
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tern node --nats URL --name NAME` with its own credentials and `flags`, as
/// a process killed when the test ends.
pub fn spawn_node(
    dir: &Path,
    server: &tern_cluster::backbone::NatsServer,
    name: &str,
    flags: &[&str],
) -> Running {
    let creds = server.node_credentials(name).expect("node credentials");
    Running(
        tern(dir)
            .env("TERN_CREDS", &creds.display().to_string())
            .env("TERN_CA", &server.ca_file().display().to_string())
            .args(["node", "--nats", server.url(), "--name", name])
            .args(flags)
            .spawn_logged(&dir.join(format!("node-{name}.log"))),
    )
}

/// The token of the API of every [`spawn_controller`].
pub const TOKEN: &str = "the-api-token-of-the-tests";

/// The read-only token of the API of every [`spawn_controller`].
pub const READ_TOKEN: &str = "a-read-only-token-for-dashboards";

/// A `tern controller` on `server` with the control plane's credentials and the
/// continuum's authority (it enrols and revokes nodes), serving the
/// API on `addr` (with [`TOKEN`], and [`READ_TOKEN`] for reads), logging to
/// `dir/controller.log`.
pub fn spawn_controller(
    dir: &Path,
    server: &tern_cluster::backbone::NatsServer,
    addr: &str,
) -> Running {
    Running(
        tern(dir)
            .env(
                "TERN_CREDS",
                &server.control_credentials_file().display().to_string(),
            )
            .env("TERN_TOKEN", TOKEN)
            .env("TERN_READ_TOKEN", READ_TOKEN)
            .env(
                "TERN_AUTHORITY",
                &server.authority_file().display().to_string(),
            )
            .env("TERN_CA", &server.ca_file().display().to_string())
            .args(["controller", "--nats", server.url(), "--listen", addr])
            .spawn_logged(&dir.join("controller.log")),
    )
}

/// Calls `f` until it gives something, every 200 ms, for at most `within`.
pub fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `lines` lines of a daemon's log, for a failure message.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The SQLite guest, built once with the bench's SQLite (fetched on first use).
pub fn sqlite_guest() -> std::path::PathBuf {
    use std::sync::OnceLock;
    static BUILT: OnceLock<std::path::PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo();
            let sources = tern_bench::sqlite::obtain_sources(&root.join("target/sqlite-src"))
                .expect("sqlite sources (scripts/test.sh fetches them)");
            let src = root.join("guests/sqlite_rows.c");
            let text = std::fs::read(&src).expect("guest source");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "guests/sqlite_rows-{:x}.wasm",
                text.iter()
                    .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
            ));
            if !out.exists() {
                std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
                let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
                tern_bench::sqlite::build_wasm_with_sqlite(&sources, &src, &tmp)
                    .expect("building the sqlite guest");
                std::fs::rename(&tmp, &out).expect("publishing the sqlite guest");
            }
            out
        })
        .clone()
}
