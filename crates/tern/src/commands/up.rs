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
    /// Address the API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7680")]
    listen: SocketAddr,
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
            let (mut continuum, backbone) =
                Continuum::start(&config, &state, &tern, Duration::from_secs(60))
                    .await
                    .map_err(anyhow::Error::msg)?;
            let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
            eprintln!(
                "continuum up: nodes {}; API on http://{}; NATS on {}; state in {}",
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
            eprintln!(
                "try `tern nodes --latency`, `tern deploy app.toml`, `tern ps`, `tern explain APP`; Ctrl-C stops it"
            );
            let serving = tokio::spawn(tern_cluster::control::serve(
                backbone,
                tern_cluster::control::Access {
                    token,
                    read_token,
                    enrolment: Some(tern_cluster::control::Enrolment {
                        authority: state
                            .join("nats")
                            .join(tern_cluster::backbone::AUTHORITY_FILE),
                        nats: continuum.server.url().to_owned(),
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
