//! `tern receive`: wait for one live migration from `tern run --migrate-to` and run the
//! guest to its end here.

use std::net::TcpListener;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tern_snapshot::{RunEnd, receive};

use crate::common::{on_guest_thread, report};

/// Receive one migrating guest and run it to completion in the given volume directories.
///
/// Listens on ADDR, accepts one migration, copies its memory and volume files as they
/// come, restores it, confirms to the source and runs it. Exit status: the guest's, as
/// for `tern run`; 1 when the migration breaks off (the source then keeps the guest).
#[derive(Debug, Args)]
pub struct ReceiveCommand {
    /// Address to listen on, HOST:PORT (e.g. 127.0.0.1:7070, 0.0.0.0:7070).
    #[arg(long, value_name = "ADDR")]
    listen: String,

    #[command(flatten)]
    landing: crate::landing::LandingArgs,
}

impl ReceiveCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let dirs = self.landing.dirs()?;
        let engine = self.landing.engine()?;
        let rewriter = self.landing.rewriter();
        let listener = TcpListener::bind(&self.listen)
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        let local = listener.local_addr().context("listening socket")?;
        eprintln!("receive: listening on {local}");
        let limits = self.landing.limits();
        let end = on_guest_thread(self.landing.engine.max_stack, move || {
            receive(listener, &engine, &rewriter, &dirs, &limits, |line| {
                eprintln!("{line}")
            })
        })?
        .context("receiving a migration")?;
        Ok(match end {
            RunEnd::Finished(outcome) => report(outcome),
            RunEnd::Stopped => ExitCode::SUCCESS,
        })
    }
}
