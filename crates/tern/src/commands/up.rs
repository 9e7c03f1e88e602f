//! `tern up`: a whole continuum on this machine, until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;
use tern_cluster::up::{Continuum, ContinuumConfig};

/// Start a continuum on this machine: nats-server with JetStream in the state
/// directory, the control plane and its API, and one `tern node` process per node (by
/// default a cloud, an edge and an IoT node, with emulated links between their sites).
/// Runs until Ctrl-C or SIGTERM, then stops the control plane, every node (each
/// checkpoints its migratable apps first) and the server; the next `tern up` on the same
/// state resumes those apps.
#[derive(Debug, Args)]
pub struct UpCommand {
    /// The nodes to start, as `[[node]]` tables (name, tier, memory; site, engine,
    /// cores, labels) [default: cloud, edge and iot].
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Address the API listens on; the backbone (NATS, TLS) listens on the same IP, on
    /// a port kept in the state directory. Beyond loopback (`0.0.0.0:7680`), the API is
    /// HTTPS with a certificate from the continuum's CA, and other machines can join:
    /// `tern up` writes a join command for them.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7680")]
    listen: SocketAddr,
    /// The host name or address other machines reach this one by [default: the
    /// --listen address, or this machine's host name when it is 0.0.0.0].
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Where the backbone's files and the nodes' logs live [default:
    /// ~/.local/state/tern].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    #[command(flatten)]
    settings: crate::common::ControlArgs,
}

impl UpCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let config = match &self.config {
            None => ContinuumConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                tern_cluster::up::parse_config(&text)
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?
            }
        };
        let state = self.state.unwrap_or_else(tern_cluster::up::default_state);
        let tern = std::env::current_exe().context("locating the tern binary")?;
        let runtime = crate::common::runtime()?;
        runtime.block_on(async move {
            // Installed first: a Ctrl-C while the continuum starts stops it once started.
            let stop = futures_util::FutureExt::shared(crate::common::stopped());
            let listener = tern_cluster::control::bind(self.listen)
                .await
                .map_err(anyhow::Error::msg)?;
            let advertise = self.advertise.clone().or_else(|| {
                self.listen
                    .ip()
                    .is_unspecified()
                    .then(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                    .flatten()
                    .map(|h| h.trim().to_owned())
            });
            let reach = tern_cluster::up::Reach {
                ip: self.listen.ip(),
                advertise: advertise.clone(),
            };
            let (mut continuum, backbone) =
                Continuum::start(&config, &state, &tern, &reach, Duration::from_secs(60))
                    .await
                    .map_err(anyhow::Error::msg)?;
            // Beyond loopback the API is HTTPS, with a certificate the continuum's CA
            // issues at each start for the names it is reached by.
            let tls = if self.listen.ip().is_loopback() {
                None
            } else {
                let names = tern_trust::tls::server_names(self.listen.ip(), advertise.as_deref());
                let issued = continuum
                    .server
                    .ca()
                    .and_then(|ca| ca.issue_server(&names))
                    .and_then(|i| tern_trust::tls::server_config(&i.cert_pem, &i.key_pem))
                    .map_err(|e| anyhow!("cannot certify the API: {e}"))?;
                Some(issued)
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            eprintln!(
                "continuum up: nodes {}; API on {scheme}://{}; NATS on {}; state in {}",
                names.join(", "),
                self.listen,
                continuum.server.url(),
                state.display()
            );
            let token_file = state.join(tern_cluster::up::API_TOKEN_FILE);
            let read_file = state.join(tern_cluster::up::READ_TOKEN_FILE);
            let mut tokens = Vec::new();
            for file in [&token_file, &read_file] {
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot make {}", dir.display()))?;
                }
                tokens.push(tern_cluster::backbone::secret_token(file).with_context(|| {
                    format!("cannot keep the API's token in {}", file.display())
                })?);
            }
            let read_token = tokens.pop();
            let token = tokens.pop();
            // Only where the secrets are: a log that keeps stderr keeps no secret.
            eprintln!(
                "the API's token is in {} (`tern` reads it there), a read-only one in {}; the control plane's NATS credentials in {}",
                token_file.display(),
                read_file.display(),
                continuum.server.control_credentials_file().display()
            );
            // A join command for another machine, with a one-time token: kept in a file
            // only its owner reads, and shown on a terminal, never in a log.
            let api_host = advertise.clone().unwrap_or_else(|| self.listen.ip().to_string());
            let api_url = format!("{scheme}://{api_host}:{}", self.listen.port());
            let join_file = state.join("api/join-command");
            match join_command(&backbone, &api_url, &continuum.server.ca_file()).await {
                Ok(command) => {
                    tern_trust::write_private(&join_file, &format!("{command}\n"))
                        .with_context(|| format!("cannot write {}", join_file.display()))?;
                    eprintln!(
                        "another machine joins with the command in {} (a one-time token, good for an hour; `tern node token` makes more)",
                        join_file.display()
                    );
                    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                        println!("{command}");
                    }
                }
                Err(e) => eprintln!("no join command for other machines: {e}"),
            }
            eprintln!(
                "try `tern nodes --latency`, `tern deploy app.toml`, `tern ps`, `tern explain APP`; Ctrl-C stops it"
            );
            let serving = tokio::spawn(tern_cluster::control::serve(
                backbone,
                tern_cluster::control::Access {
                    tls,
                    token,
                    read_token,
                    enrolment: Some(tern_cluster::control::Enrolment {
                        authority: state
                            .join("nats")
                            .join(tern_cluster::backbone::AUTHORITY_FILE),
                        nats: continuum.server.url().to_owned(),
                        ca: Some(continuum.server.ca_file()),
                        ca_key: Some(continuum.server.ca_key_file()),
                    }),
                },
                listener,
                self.settings.settings(),
                stop.clone(),
            ));
            // Nodes and the server that end are started again until Ctrl-C.
            continuum.keep(&config, &state, &tern, stop).await;
            let served = serving.await;
            continuum.stop().await;
            served.map_err(|e| anyhow!("the control plane failed: {e}"))??;
            eprintln!("continuum stopped");
            Ok(ExitCode::SUCCESS)
        })
    }
}

/// `tern node --join …` for another machine: the API's URL, a new one-time join token
/// and the fingerprint of the continuum's CA.
async fn join_command(
    backbone: &tern_cluster::backbone::Backbone,
    api: &str,
    ca: &std::path::Path,
) -> anyhow::Result<String> {
    let pem =
        std::fs::read_to_string(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let fingerprint = tern_trust::tls::fingerprint_of_pem(&pem)
        .with_context(|| format!("{} holds no certificate", ca.display()))?;
    let identities = tern_cluster::identity::Identities::open(backbone).await?;
    let (token, _) = identities
        .make_token(tern_cluster::identity::JOIN_TOKEN_TTL)
        .await?;
    Ok(format!(
        "tern node --join {api} --token {token} --ca-fingerprint {fingerprint} --name NAME --site SITE --tier edge"
    ))
}
