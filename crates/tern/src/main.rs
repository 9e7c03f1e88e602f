#![doc = include_str!("../README.md")]

mod api;
mod checkpoint;
mod commands;
mod common;
mod exit;
mod landing;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run WebAssembly programs anywhere on the cloud-edge continuum: sandboxed by WASI
/// capabilities, bounded by limits, compiled ahead of time.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, long_about = None)]
#[command(after_help = "Logging goes to stderr, filtered by TERN_LOG (e.g. TERN_LOG=debug).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(commands::run::RunCommand),
    Restore(commands::restore::RestoreCommand),
    Receive(commands::receive::ReceiveCommand),
    Compile(commands::compile::CompileCommand),
    Bench(commands::bench::BenchCommand),
    Node(commands::node::NodeCommand),
    Controller(commands::controller::ControllerCommand),
    Nodes(commands::nodes::NodesCommand),
    Plan(commands::plan::PlanCommand),
    Deploy(commands::deploy::DeployCommand),
    Ps(commands::ps::PsCommand),
    Logs(commands::logs::LogsCommand),
    Explain(commands::explain::ExplainCommand),
    Migrate(commands::migrate::MigrateCommand),
    Drain(commands::drain::DrainCommand),
    Cp(commands::cp::CpCommand),
    Rm(commands::rm::RmCommand),
    Up(commands::up::UpCommand),
    Keygen(commands::sign::KeygenCommand),
    Sign(commands::sign::SignCommand),
    Verify(commands::sign::VerifyCommand),
    #[command(hide = true)]
    Instance(commands::instance::InstanceCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.command.is_daemon());
    // Every TLS connection (the API's client, the backbone's) uses ring; set once for
    // the process, before any is made.
    let _ = rustls::crypto::CryptoProvider::install_default(
        tern_trust::tls::provider().as_ref().clone(),
    );
    if cli.command.prints_for_pipes() {
        // `tern ps | head -n 1`: a reader that stops early ends these verbs as SIGPIPE
        // ends other tools, quietly. (Guest-running verbs keep it ignored: they report
        // a guest's closed stdout themselves.)
        // SAFETY: setting a signal's disposition to its default before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run(c) => c.execute(),
        Command::Restore(c) => c.execute(),
        Command::Receive(c) => c.execute(),
        Command::Compile(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Command::Bench(c) => c.execute().map(|()| ExitCode::SUCCESS),
        Command::Node(c) => c.execute(),
        Command::Controller(c) => c.execute(),
        Command::Nodes(c) => c.execute(),
        Command::Plan(c) => c.execute(),
        Command::Deploy(c) => c.execute(),
        Command::Ps(c) => c.execute(),
        Command::Logs(c) => c.execute(),
        Command::Explain(c) => c.execute(),
        Command::Migrate(c) => c.execute(),
        Command::Drain(c) => c.execute(),
        Command::Cp(c) => c.execute(),
        Command::Rm(c) => c.execute(),
        Command::Up(c) => c.execute(),
        Command::Keygen(c) => c.execute(),
        Command::Sign(c) => c.execute(),
        Command::Verify(c) => c.execute(),
        Command::Instance(c) => c.execute(),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit::TERN_ERROR)
        }
    }
}

impl Command {
    /// The continuum's long-running parts, whose logs say what happened and when.
    fn is_daemon(&self) -> bool {
        matches!(
            self,
            Command::Node(_) | Command::Controller(_) | Command::Up(_)
        )
    }

    /// Verbs that only print what the continuum says.
    fn prints_for_pipes(&self) -> bool {
        matches!(
            self,
            Command::Nodes(_)
                | Command::Plan(_)
                | Command::Deploy(_)
                | Command::Ps(_)
                | Command::Logs(_)
                | Command::Explain(_)
                | Command::Rm(_)
                | Command::Migrate(_)
                | Command::Drain(_)
                | Command::Cp(_)
                | Command::Verify(_)
        )
    }
}

/// Logging to stderr, filtered by `TERN_LOG`. A node, a controller and `tern up` log
/// their lifecycle (instances started and ended, moves, nodes lost) with the time;
/// the other verbs only warnings.
fn init_logging(daemon: bool) {
    use tracing_subscriber::EnvFilter;
    // async-nats logs what Tern reports itself, in one line of its own (a refused
    // token, a lost connection), so it is quiet unless TERN_LOG names it.
    let default = if daemon {
        "warn,tern_cluster=info,async_nats=off"
    } else {
        "warn,async_nats=off"
    };
    let filter = EnvFilter::try_from_env("TERN_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if daemon {
        builder.init();
    } else {
        builder.without_time().init();
    }
}
