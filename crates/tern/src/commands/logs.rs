//! `tern logs`: an app's output, wherever it ran.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::api::ApiArgs;

/// Print an app's output: its stdout on stdout and its stderr on stderr, from its
/// start, across every node it ran on (a migrated app's output goes on where it left
/// off, nothing lost or repeated). Tern's own notes go to stderr between `--` marks:
/// an app that is not migratable and restarted from its start says there that what
/// follows repeats its earlier output.
#[derive(Debug, Args)]
pub struct LogsCommand {
    /// The app's name.
    #[arg(value_name = "APP")]
    app: String,
    /// Keep printing new output as it comes, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    #[command(flatten)]
    api: ApiArgs,
}

impl LogsCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let mut after = 0u64;
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        loop {
            let body = self
                .api
                .get_bytes(&format!("/v1/apps/{}/logs?after={after}", self.app))?;
            let empty = body.is_empty();
            let mut rest = body.as_slice();
            while !rest.is_empty() {
                let (seq, kind, bytes, tail) = frame(rest)?;
                match kind {
                    "out" => out.write_all(bytes)?,
                    "note" => {
                        out.flush()?;
                        writeln!(err, "-- tern: {} --", String::from_utf8_lossy(bytes))?;
                    }
                    _ => err.write_all(bytes)?,
                }
                after = seq;
                rest = tail;
            }
            out.flush()?;
            if empty {
                if !self.follow {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
}

/// One frame of the API's answer: `SEQ out|err|note LEN\n` and LEN bytes.
fn frame(b: &[u8]) -> anyhow::Result<(u64, &str, &[u8], &[u8])> {
    let bad = || anyhow::anyhow!("the API's output is not in Tern's framing");
    let nl = b.iter().position(|&c| c == b'\n').ok_or_else(bad)?;
    let head = std::str::from_utf8(&b[..nl]).map_err(|_| bad())?;
    let mut parts = head.split(' ');
    let seq: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let kind = parts.next().ok_or_else(bad)?;
    let len: usize = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let body = &b[nl + 1..];
    let bytes = body.get(..len).context("the API's output was cut short")?;
    Ok((seq, kind, bytes, &body[len..]))
}
