//! What several verbs share: the values of their flags, the guest thread, the
//! watchdog that enforces `--timeout`, and how a guest's end becomes an exit code.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tern_runtime::{
    DirAccess, EngineKind, LimitExceeded, ModuleFormat, Outcome, Preopen, RuntimeError,
    detect_format, parse_duration, parse_size, wasm_binary,
};

use crate::exit;

/// Parses `--engine`.
pub fn parse_engine(s: &str) -> Result<EngineKind, RuntimeError> {
    s.parse()
}

/// The artifact cache directory the flags ask for: none with `--no-cache`, else
/// `--cache-dir` or the default.
pub fn cache_root(
    no_cache: bool,
    cache_dir: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    if no_cache {
        return None;
    }
    cache_dir
        .map(std::path::Path::to_path_buf)
        .or_else(tern_runtime::ArtifactCache::default_dir)
}

/// Stack reserved for host frames (Tern, Wasmtime, WASI) on the guest thread.
const HOST_STACK: usize = 8 << 20;

pub(crate) fn read_write_dir(spec: &str) -> Result<Preopen, RuntimeError> {
    Preopen::parse(spec, DirAccess::ReadWrite)
}

pub(crate) fn read_only_dir(spec: &str) -> Result<Preopen, RuntimeError> {
    Preopen::parse(spec, DirAccess::ReadOnly)
}

pub(crate) fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text) {
        Ok(d) if d.is_zero() => Err("the duration must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Parses a size given on the command line, which must carry its unit: a bare `64`
/// is far more often a forgotten `MiB` than 64 bytes.
pub(crate) fn memory_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "`{t}` has no unit: write {t}MiB, or use B, K/KiB, M/MiB, G/GiB (binary) or KB, MB, GB (decimal)"
        ));
    }
    parse_size(t).map_err(|e| e.to_string())
}

pub(crate) fn stack_size(text: &str) -> Result<usize, String> {
    let bytes = memory_size(text)?;
    usize::try_from(bytes)
        .ok()
        .filter(|b| (16 << 10..=64 << 20).contains(b))
        .ok_or_else(|| "the stack bound must be between 16KiB and 64MiB".into())
}

/// Prints how the guest ended (nothing for a normal exit) and picks the exit code.
pub(crate) fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Exited(code) => ExitCode::from(code as u8),
        // Quietly, as a native process killed by SIGPIPE.
        Outcome::BrokenPipe => ExitCode::from(exit::BROKEN_PIPE),
        Outcome::LimitExceeded(limit) => {
            eprintln!("error: {limit}");
            ExitCode::from(exit::for_limit(&limit))
        }
        Outcome::Trapped { message, backtrace } => {
            eprintln!("error: guest trapped: {message}");
            if let Some(bt) = backtrace {
                eprintln!("{}", bt.trim_end());
            }
            ExitCode::from(exit::TRAP)
        }
    }
}

/// Ends the process when the guest runs past `--timeout`, whether it spins in Wasm code
/// or blocks in a host call. A process-wide stop needs no checks in the generated code;
/// embedders that must stop one guest among many use `Limits::timeout` with an
/// interruptible engine instead.
pub(crate) struct Watchdog {
    done: Arc<Mutex<bool>>,
}

impl Watchdog {
    pub(crate) fn start(limit: Duration) -> Watchdog {
        let done = Arc::new(Mutex::new(false));
        let flag = Arc::clone(&done);
        thread::spawn(move || {
            thread::sleep(limit);
            // Holding the lock while exiting means the guest cannot be reported as both
            // finished and timed out.
            let finished = flag.lock().unwrap_or_else(|e| e.into_inner());
            if !*finished {
                let _ = std::io::stdout().flush();
                eprintln!("error: {}", LimitExceeded::Timeout { limit });
                std::process::exit(exit::TIMEOUT.into());
            }
        });
        Watchdog { done }
    }

    pub(crate) fn disarm(self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// Runs `f` on a thread whose stack holds the Wasm stack bound plus host frames. Wasm
/// frames live on the calling thread's stack, so that the bound, not the thread's own
/// guard page, is what a deep guest hits.
pub fn on_guest_thread<T: Send + 'static>(
    max_stack: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    thread::Builder::new()
        .name("guest".into())
        .stack_size(max_stack + HOST_STACK)
        .spawn(f)
        .context("starting the guest thread")?
        .join()
        .map_err(|_| anyhow::anyhow!("the guest thread panicked"))
}

/// The Wasm binary of a module file; checkpointing rewrites Wasm, so a precompiled
/// artifact will not do.
pub fn read_wasm(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    let format = detect_format(path, &bytes)?;
    if format == ModuleFormat::Precompiled {
        anyhow::bail!(
            "{} is a precompiled artifact; checkpointing needs the module's .wasm",
            path.display()
        );
    }
    Ok(wasm_binary(path, &bytes, format)?)
}

/// `--dir` and `--ro-dir`: the host directories a guest is given, or (for a restored or
/// received guest) where its volumes land.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// A host directory the guest sees read-write, as GUEST (without `::GUEST`, under the
    /// same path). For a restored or received guest, GUEST names one of its volumes.
    /// Repeatable.
    #[arg(long = "dir", value_name = "HOST[::GUEST]", value_parser = read_write_dir)]
    dirs: Vec<Preopen>,

    /// The same, read-only: writes fail inside the guest. Repeatable.
    #[arg(long = "ro-dir", value_name = "HOST[::GUEST]", value_parser = read_only_dir)]
    ro_dirs: Vec<Preopen>,
}

impl DirArgs {
    /// Every directory given, read-write ones first.
    pub fn all(&self) -> Vec<Preopen> {
        self.dirs.iter().chain(&self.ro_dirs).cloned().collect()
    }
}

/// The engine that runs a guest, its memory and stack bounds, and the cache of what it
/// compiles.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Execution engine: cranelift (native code) or pulley (portable interpreter). A
    /// restored or received guest runs under either, whichever it ran under before.
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine, default_value = "cranelift")]
    pub engine: EngineKind,

    /// Cap on the guest's linear memory, e.g. 64MiB, 512K, 2G.
    #[arg(long, value_name = "SIZE", value_parser = memory_size)]
    pub max_memory: Option<u64>,

    /// Bound on the native stack used by Wasm frames, from 16KiB to 64MiB.
    #[arg(long, value_name = "SIZE", value_parser = stack_size, default_value = "512KiB")]
    pub max_stack: usize,

    /// Do not read or write the cache of compiled (and rewritten) modules.
    #[arg(long)]
    no_cache: bool,

    /// Cache directory [default: $TERN_CACHE_DIR, $XDG_CACHE_HOME/tern/artifacts or
    /// ~/.cache/tern/artifacts].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl EngineArgs {
    /// The cache directory the flags ask for: none with `--no-cache`.
    pub fn cache_root(&self) -> Option<PathBuf> {
        cache_root(self.no_cache, self.cache_dir.as_deref())
    }
}

/// A future that completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled, so a signal that comes in
/// between is not lost to the default action. Call it inside the runtime.
pub fn stopped() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // No handler could be installed: only the default actions remain.
            _ => std::future::pending().await,
        }
    }
}

/// Where the continuum's backbone is.
#[derive(Debug, clap::Args)]
pub struct NatsArgs {
    /// The backbone's NATS URL [default: nats://127.0.0.1:4222, or for an enrolled
    /// node the one its enrolment gave].
    #[arg(long, value_name = "URL", env = "TERN_NATS")]
    pub nats: Option<String>,
    /// The credentials file this process joins the backbone with: a user's JWT and
    /// seed, as `tern up` writes them (`STATE/nats/control.creds` for a control plane,
    /// `STATE/nats/nodes/NAME.creds` for a node) or enrolment does.
    #[arg(long, value_name = "FILE", env = "TERN_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// The continuum's CA certificate, which the backbone server's certificate must
    /// chain to (`tern up` keeps it in STATE/nats/tls/ca.pem; an enrolled node, in its
    /// state).
    #[arg(long, value_name = "FILE", env = "TERN_CA")]
    pub ca: Option<std::path::PathBuf>,
}

/// Where the backbone is when not told.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

impl NatsArgs {
    /// The backbone's URL: the one given, or the default.
    pub fn url(&self) -> &str {
        self.nats.as_deref().unwrap_or(DEFAULT_NATS)
    }

    /// The credentials file's text, if one was given.
    pub fn credentials(&self) -> anyhow::Result<Option<String>> {
        use anyhow::Context as _;
        self.creds
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the credentials {}", p.display()))
            })
            .transpose()
    }

    /// Joins the backbone as the control plane.
    pub async fn backbone(&self) -> anyhow::Result<tern_cluster::backbone::Backbone> {
        let creds = self.credentials()?;
        let login = tern_cluster::backbone::Login {
            creds,
            ca: self.ca.clone(),
        };
        Ok(tern_cluster::backbone::Backbone::join(self.url(), &login).await?)
    }
}

/// How the control plane runs (`tern controller`, `tern up`).
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// How long a node may be silent, while the backbone answers, before the control
    /// plane declares it lost and places its apps elsewhere. Shorter fails over
    /// sooner; longer rides out a node that a busy machine starves for a while. A
    /// stalled or restarted nats-server never makes a node lost, whatever this is.
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = lost_after)]
    pub lost_after: std::time::Duration,
}

impl ControlArgs {
    pub fn settings(&self) -> tern_cluster::control::Settings {
        tern_cluster::control::Settings {
            lost_after: self.lost_after,
        }
    }
}

/// `--lost-after`: at least two heartbeats long.
fn lost_after(text: &str) -> Result<std::time::Duration, String> {
    let d = positive_duration(text)?;
    let least = 2 * tern_cluster::backbone::HEARTBEAT;
    if d < least {
        return Err(format!(
            "{text} is shorter than two heartbeats ({} ms): a healthy node would be taken for lost",
            least.as_millis()
        ));
    }
    Ok(d)
}

/// The async runtime of the continuum's verbs: two worker threads are plenty for an
/// agent, a control plane or `tern up`, which mostly wait.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}
