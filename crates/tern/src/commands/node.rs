//! `tern node`: a node agent. It measures this machine under its engine, joins the
//! continuum's backbone, runs the apps placed on it, and heartbeats until it is stopped.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use tern_cluster::Tier;
use tern_cluster::agent::{self, NodeConfig};
use tern_runtime::EngineKind;

/// Run a node agent: measure this machine's compute under the node's engine, join the
/// continuum over NATS, run the apps the control plane places here (each in a process
/// of its own), and say it is alive with a heartbeat twice a second. On Ctrl-C or
/// SIGTERM it checkpoints its migratable apps and leaves. A node that dies or hangs
/// without leaving is declared lost by the control plane once it has been silent for
/// the control plane's --lost-after (4 s by default), and its apps start elsewhere; a
/// slow or absent backbone never ends a node or its apps.
///
/// A node joins with credentials of its own: the file `tern up` wrote for it
/// (--creds), or those its enrolment made. To enrol, it makes its own key pair and
/// gives its public key, its name and a one-time join token (`tern node token`) to the
/// control plane (--join URL --token TOKEN), which binds the name to the key and signs
/// the node's credentials; they are kept in the node's state (`identity.creds`, 0600),
/// and the token is spent.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeCommand {
    #[command(subcommand)]
    action: Option<NodeAction>,
    /// The node's name, unique in the continuum.
    #[arg(long, value_parser = node_name, required = true)]
    name: Option<String>,
    #[command(flatten)]
    nats: crate::common::NatsArgs,
    /// Enrol through the control plane's API at URL (with --token), once: later starts
    /// use the credentials kept in the node's state.
    #[arg(long, value_name = "URL", requires = "token")]
    join: Option<String>,
    /// A one-time join token (`tern node token` makes one), spent by enrolment.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TERN_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The fingerprint (`sha256:…`) the continuum's CA must have: enrolment refuses a
    /// control plane that gives another (`tern up` prints it in its join command).
    #[arg(long, value_name = "SHA256")]
    ca_fingerprint: Option<String>,
    /// Where the node is; nodes of a site share its links [default: the node's name].
    #[arg(long, value_parser = site_name)]
    site: Option<String>,
    /// cloud, edge or iot.
    #[arg(long, default_value = "edge", value_parser = |s: &str| s.parse::<Tier>())]
    tier: Tier,
    /// Engine the node runs guests on: cranelift or pulley.
    #[arg(long, value_parser = crate::common::parse_engine, default_value = "cranelift")]
    engine: EngineKind,
    /// Cores the node gives its instances [default: all of this machine's].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    cores: Option<u32>,
    /// Memory the node gives its instances (`512MiB`, `2GiB`).
    #[arg(long, default_value = "1GiB", value_parser = crate::common::memory_size)]
    memory: u64,
    /// A label as KEY=VALUE, for manifests' constraints and affinities; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
    labels: Vec<(String, String)>,
    /// Where the node listens for other nodes' pings (port 0: any free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    link_listen: std::net::SocketAddr,
    /// The address other nodes reach this node's link at, when not the one it listens
    /// on (behind NAT, or listening on 0.0.0.0).
    #[arg(long, value_name = "HOST:PORT")]
    link_advertise: Option<String>,
    /// Emulate the network to the nodes of another site: SITE=RTT_MS/MBIT, e.g.
    /// `cloud=20/100` (20 ms round trip, 100 Mbit/s). Every byte to a node there (pings
    /// and migrations) goes through a relay that delays it and holds it to that rate;
    /// `tern up` sets these from its config. Repeatable.
    #[arg(long = "emulate-link", value_name = "SITE=RTT_MS/MBIT", value_parser = emulated_link)]
    links: Vec<(String, tern_cluster::emulate::Shape)>,
    /// Where the node keeps its instances' files (modules, volumes, checkpoints)
    /// [default: ~/.local/state/tern/nodes/NAME].
    #[arg(long, value_name = "DIR")]
    state: Option<std::path::PathBuf>,
    /// The node's certificate from the continuum's CA, for the key in its credentials:
    /// its migration streams go over TLS that it authenticates both ends of. Without
    /// one, it migrates only on loopback [default: beside --creds, NAME.pem for
    /// NAME.creds, as `tern up` writes them; for an enrolled node, the one enrolment
    /// gave].
    #[arg(long, value_name = "FILE", env = "TERN_CERT")]
    cert: Option<std::path::PathBuf>,
}

/// What `tern node` does besides running an agent.
#[derive(Debug, clap::Subcommand)]
enum NodeAction {
    /// Make a one-time join token: it enrols one node, within --ttl.
    Token {
        /// How long it enrols.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::common::positive_duration)]
        ttl: std::time::Duration,
        #[command(flatten)]
        api: crate::api::ApiArgs,
    },
    /// Revoke node NAME: the server cuts its connections at once and refuses its key
    /// from then on, and its apps are placed elsewhere. The name may then be enrolled
    /// again, with another key.
    Revoke {
        #[arg(value_parser = node_name)]
        name: String,
        #[command(flatten)]
        api: crate::api::ApiArgs,
    },
}

impl NodeAction {
    fn execute(self) -> anyhow::Result<ExitCode> {
        match self {
            NodeAction::Token { ttl, api } => {
                let body = serde_json::json!({ "ttl_s": ttl.as_secs().max(1) });
                let made: tern_cluster::control::JoinToken = api.post(
                    "/v1/join-tokens",
                    "application/json",
                    body.to_string().as_bytes(),
                )?;
                // The token alone on stdout, for `$(tern node token)`.
                println!("{}", made.token);
                Ok(ExitCode::SUCCESS)
            }
            NodeAction::Revoke { name, api } => {
                let revoked: tern_cluster::control::Revoked =
                    api.post(&format!("/v1/nodes/{name}/revoke"), "application/json", b"")?;
                println!(
                    "node {} revoked (key {}): cut off, its apps are placed elsewhere",
                    revoked.node, revoked.key
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// The node's login (credentials and CA) and the backbone's URL: from --creds and --ca,
/// from an earlier enrolment kept in `state`, or from enrolling now. A CA given by
/// enrolment must have the fingerprint `pin` when one is given.
fn identity(
    name: &str,
    nats: &crate::common::NatsArgs,
    join: Option<&str>,
    token: Option<&str>,
    pin: Option<&str>,
    state: &std::path::Path,
) -> anyhow::Result<(tern_cluster::backbone::Login, String)> {
    use anyhow::Context as _;
    use tern_cluster::backbone::Login;
    if let Some(creds) = nats.credentials()? {
        let login = Login {
            creds: Some(creds),
            ca: nats.ca.clone(),
        };
        return Ok((login, nats.url().to_owned()));
    }
    let kept = state.join("identity.creds");
    let kept_url = state.join("identity.nats");
    let kept_ca = state.join("ca.pem");
    let url_of = |enrolled: Option<String>| {
        nats.nats
            .clone()
            .or(enrolled)
            .unwrap_or_else(|| crate::common::DEFAULT_NATS.to_owned())
    };
    let ca_of = || {
        nats.ca
            .clone()
            .or_else(|| kept_ca.is_file().then(|| kept_ca.clone()))
    };
    if let Ok(creds) = std::fs::read_to_string(&kept) {
        let enrolled = std::fs::read_to_string(&kept_url)
            .ok()
            .map(|u| u.trim().to_owned());
        let login = Login {
            creds: Some(creds),
            ca: ca_of(),
        };
        return Ok((login, url_of(enrolled)));
    }
    let (Some(join), Some(token)) = (join, token) else {
        anyhow::bail!(
            "node {name} has no credentials for the backbone: enrol it with --join URL --token TOKEN (`tern node token` makes one), or give --creds FILE (`tern up` writes STATE/nats/nodes/NAME.creds)"
        );
    };
    // The join token crosses the network only encrypted, to a server the continuum's
    // CA certified: over https:// with the CA pinned or given, or on loopback.
    let api_ca = if join.starts_with("https://") {
        let pem = match (&nats.ca, pin) {
            (Some(file), _) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the CA certificate {}", file.display()))?,
            (None, Some(pin)) => crate::api::pinned_ca(join, pin)
                .with_context(|| format!("node {name} did not enrol"))?,
            (None, None) => anyhow::bail!(
                "node {name} cannot tell {join} is the continuum's: give --ca-fingerprint (the join command `tern up` wrote has it) or --ca FILE"
            ),
        };
        std::fs::create_dir_all(state)
            .with_context(|| format!("cannot make {}", state.display()))?;
        std::fs::write(&kept_ca, &pem)
            .with_context(|| format!("cannot write {}", kept_ca.display()))?;
        Some(kept_ca.clone())
    } else if !loopback(join) {
        anyhow::bail!(
            "node {name} will not send its join token to {join} in plain HTTP, which anyone on the way reads: use the https:// URL `tern up --listen` printed"
        );
    } else {
        None
    };
    let (seed, key) = tern_trust::nats::new_user()?;
    let api = crate::api::ApiArgs {
        api: join.to_owned(),
        token: None,
        ca: api_ca,
    };
    let request = tern_cluster::control::EnrolRequest {
        token: token.trim().to_owned(),
        name: name.to_owned(),
        key,
    };
    let enrolled: tern_cluster::control::Enrolled = api
        .post_without_token("/v1/enrol", &serde_json::to_vec(&request)?)
        .with_context(|| format!("node {name} could not enrol at {join}"))?;
    if let Some(pin) = pin {
        let got = enrolled
            .ca
            .as_deref()
            .and_then(tern_trust::tls::fingerprint_of_pem);
        if got.as_deref() != Some(pin) {
            anyhow::bail!(
                "node {name} did not enrol: the control plane at {join} gave a CA of fingerprint {}, not {pin}; it is not the continuum's",
                got.as_deref().unwrap_or("(none)")
            );
        }
    }
    let creds = tern_trust::nats::credentials(&enrolled.jwt, &seed);
    std::fs::create_dir_all(state).with_context(|| format!("cannot make {}", state.display()))?;
    if let Some(ca) = &enrolled.ca {
        std::fs::write(&kept_ca, ca)
            .with_context(|| format!("cannot write {}", kept_ca.display()))?;
    }
    if let Some(cert) = &enrolled.cert {
        let file = state.join("identity.pem");
        std::fs::write(&file, cert).with_context(|| format!("cannot write {}", file.display()))?;
    }
    write_private(&kept, &creds)?;
    write_private(&kept_url, &enrolled.nats)?;
    eprintln!(
        "node {name} enrolled at {join}: its credentials are in {}",
        kept.display()
    );
    let login = Login {
        creds: Some(creds),
        ca: ca_of(),
    };
    Ok((login, url_of(Some(enrolled.nats))))
}

/// The node's TLS identity for migration streams: its certificate in `file`, for the
/// key in its credentials, with the continuum's CA.
fn node_tls(
    file: &std::path::Path,
    login: &tern_cluster::backbone::Login,
) -> anyhow::Result<tern_trust::tls::NodeTls> {
    use anyhow::Context as _;
    let cert = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the node's certificate {}", file.display()))?;
    let seed = login
        .creds
        .as_deref()
        .and_then(tern_trust::nats::seed_of_credentials)
        .context("the node's credentials hold no key for its certificate")?;
    let ca = login.ca.as_ref().with_context(|| {
        format!(
            "the node's certificate {} needs the continuum's CA to check its peers by (--ca)",
            file.display()
        )
    })?;
    let ca = std::fs::read_to_string(ca)
        .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
    tern_trust::tls::NodeTls::new(&cert, &seed, &ca)
        .map_err(|e| anyhow::anyhow!("the node's certificate {}: {e}", file.display()))
}

/// Whether `url`'s host is a loopback address (or `localhost`).
fn loopback(url: &str) -> bool {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .is_some_and(|h| tern_cluster::link::is_loopback_host(&h))
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    tern_trust::write_private(path, text)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn node_name(s: &str) -> Result<String, String> {
    if tern_cluster::manifest::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a node name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

fn site_name(s: &str) -> Result<String, String> {
    if tern_cluster::manifest::valid_name(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a site name: use 1 to 63 lowercase letters, digits and `-`, starting with a letter"
        ))
    }
}

fn emulated_link(s: &str) -> Result<(String, tern_cluster::emulate::Shape), String> {
    let bad = || format!("`{s}`: write an emulated link as SITE=RTT_MS/MBIT, e.g. cloud=20/100");
    let (site, shape) = s.split_once('=').ok_or_else(bad)?;
    let (rtt, mbit) = shape.split_once('/').ok_or_else(bad)?;
    let rtt: f64 = rtt.parse().map_err(|_| bad())?;
    let mbit: f64 = mbit.parse().map_err(|_| bad())?;
    if site.is_empty() || !(0.0..=10_000.0).contains(&rtt) || !(0.001..=100_000.0).contains(&mbit) {
        return Err(bad());
    }
    Ok((
        site.to_owned(),
        tern_cluster::emulate::Shape::of_rtt(rtt, mbit),
    ))
}

fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}`: write a label as KEY=VALUE")),
    }
}

/// Joins the backbone as node `name`, waiting (and saying so once) while the control
/// plane has not made its stores yet: a node may start before the control plane.
async fn join(
    url: &str,
    login: &tern_cluster::backbone::Login,
    name: &str,
) -> anyhow::Result<tern_cluster::backbone::Backbone> {
    use tern_cluster::backbone::{Backbone, BackboneError};
    let mut said = false;
    loop {
        match Backbone::join_as_node(url, login, name).await {
            Err(e @ BackboneError::Unmade { .. }) => {
                if !said {
                    eprintln!("node {name} waits: {e}");
                    said = true;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            joined => return Ok(joined?),
        }
    }
}

impl NodeCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(action) = self.action {
            return action.execute();
        }
        let Some(name) = self.name else {
            anyhow::bail!("a node needs --name");
        };
        let cores = self.cores.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
        });
        let state = self
            .state
            .unwrap_or_else(|| tern_cluster::up::default_state().join("nodes").join(&name));
        let (login, url) = identity(
            &name,
            &self.nats,
            self.join.as_deref(),
            self.token.as_deref(),
            self.ca_fingerprint.as_deref(),
            &state,
        )?;
        let cert = self.cert.clone().or_else(|| {
            let beside = match &self.nats.creds {
                Some(creds) => creds.with_extension("pem"),
                None => state.join("identity.pem"),
            };
            beside.is_file().then_some(beside)
        });
        let tls = match cert {
            Some(file) => Some(node_tls(&file, &login)?),
            None => None,
        };
        let config = NodeConfig {
            tls,
            site: self.site.unwrap_or_else(|| name.clone()),
            name,
            tier: self.tier,
            engine: self.engine,
            cores,
            memory: self.memory,
            labels: self.labels.into_iter().collect::<BTreeMap<_, _>>(),
            link_listen: self.link_listen,
            link_advertise: self.link_advertise,
            state,
            tern: std::env::current_exe()?,
            links: self.links.into_iter().collect(),
        };
        let runtime = crate::common::runtime()?;
        runtime.block_on(async move {
            let stop = crate::common::stopped();
            let backbone = join(&url, &login, &config.name).await?;
            let name = config.name.clone();
            agent::run(config, &backbone, stop, |node| {
                eprintln!(
                    "node {} joined {}: {} {}, {} on {}, {} cores, {} MiB, compute score {:.0}",
                    node.name,
                    url,
                    node.tier,
                    node.site,
                    node.engine,
                    node.arch,
                    node.cores,
                    node.memory >> 20,
                    node.compute_score
                );
            })
            .await?;
            eprintln!("node {name} left");
            Ok(ExitCode::SUCCESS)
        })
    }
}
