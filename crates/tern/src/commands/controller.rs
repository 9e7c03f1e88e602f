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
    /// Address the API listens on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7680")]
    listen: SocketAddr,
    #[command(flatten)]
    settings: crate::common::ControlArgs,
}

impl ControllerCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let runtime = crate::common::runtime()?;
        runtime.block_on(async move {
            let stop = crate::common::stopped();
            let backbone = self.nats.backbone().await?;
            let listener = tern_cluster::control::bind(self.listen)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!(
                "control plane: API on http://{}, nodes from {}",
                listener.local_addr().unwrap_or(self.listen),
                self.nats.nats
            );
            tern_cluster::control::serve(
                backbone,
                self.nats.token.clone(),
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
