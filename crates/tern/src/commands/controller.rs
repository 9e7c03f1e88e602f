//! `tern controller`: the control plane, on its own (`tern up` starts one too).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

/// Run the control plane: follow the nodes registered on the backbone and serve the
/// HTTP API that `tern nodes`, `tern plan` and the other continuum verbs talk to. It
/// keeps no state of its own: restarted, it rebuilds its view from the backbone.
#[derive(Debug, Args)]
pub struct ControllerCommand {
    #[command(flatten)]
    nats: crate::common::NatsArgs,
    /// Address the API listens on. Beyond loopback only with a token (--token) and a
    /// certificate (--tls-cert, --tls-key): without them, anyone who reaches the API
    /// could act on the continuum, or read its tokens off the network.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7680")]
    listen: SocketAddr,
    /// The API's certificate (PEM, the server's first), for HTTPS. `tern up` issues its
    /// own from the continuum's CA.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The API's token: requests that act on the continuum, or read an app's output or
    /// files, need it. Without one (and only on loopback) the API asks for none.
    #[arg(long, value_name = "TOKEN", env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A read-only token for the API: it reads the continuum (nodes, apps, moves,
    /// plans, explanations) and acts on nothing, nor reads apps' output. For dashboards.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "TERN_READ_TOKEN",
        hide_env_values = true
    )]
    read_token: Option<String>,
    /// The continuum's authority (`STATE/nats/authority`, which `tern up` makes): with
    /// it, the control plane enrols nodes with one-time join tokens and revokes them.
    #[arg(long, value_name = "FILE", env = "TERN_AUTHORITY")]
    authority: Option<std::path::PathBuf>,
    /// The continuum CA's key (`STATE/nats/tls/ca.key`), with --ca: each node enrolled
    /// here also gets a certificate for its key, which authenticates its migration
    /// streams.
    #[arg(long, value_name = "FILE", env = "TERN_CA_KEY", requires = "authority")]
    ca_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    settings: crate::common::ControlArgs,
}

impl ControllerCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        if let Some(path) = &self.authority {
            tern_trust::nats::Authority::load(path)?;
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))
                };
                let config =
                    tern_trust::tls::server_config(&read(cert)?, &read(key)?).map_err(|e| {
                        anyhow::anyhow!("the API's certificate {}: {e}", cert.display())
                    })?;
                Some(config)
            }
            _ => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let access = tern_cluster::control::Access {
            tls,
            token: self.token.clone(),
            read_token: self.read_token.clone(),
            enrolment: self
                .authority
                .clone()
                .map(|authority| tern_cluster::control::Enrolment {
                    authority,
                    nats: self.nats.url().to_owned(),
                    ca: self.nats.ca.clone(),
                    ca_key: self.ca_key.clone(),
                }),
        };
        tern_cluster::control::exposure(self.listen, &access)
            .map_err(|e| anyhow::anyhow!("the API {e}"))?;
        let runtime = crate::common::runtime()?;
        runtime.block_on(async move {
            let stop = crate::common::stopped();
            let backbone = self.nats.backbone().await?;
            let listener = tern_cluster::control::bind(self.listen)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "control plane: API on {scheme}://{}, nodes from {}",
                listener.local_addr().unwrap_or(self.listen),
                self.nats.url()
            );
            tern_cluster::control::serve(
                backbone,
                access,
                listener,
                self.settings.settings(),
                stop,
            )
            .await?;
            eprintln!("control plane stopped");
            Ok(ExitCode::SUCCESS)
        })
    }
}
