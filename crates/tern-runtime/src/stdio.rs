//! The guest's stdin, stdout and stderr when it is given this process's
//! ([`Policy::inherit_stdio`](crate::Policy)): Wasmtime's own streams, tapped.
//!
//! - **stdin** counts every byte the guest is given, so a snapshot can say how much of
//!   its input the guest has consumed, and a restore can skip that much of its own
//!   stdin before the guest reads again ([`StdioTap::resuming`]). Bytes the guest's
//!   libc buffered but has not used yet are in its linear memory, which the snapshot
//!   carries: the count is exact at any safe point.
//! - **stdout and stderr** return `EPIPE` to the guest when the reader has gone (Wasmtime
//!   reports `EIO`), and raise [`StdioTap::broken_pipe`]; the runtime then ends the
//!   guest at its next call into the host with [`Outcome::BrokenPipe`](crate::Outcome),
//!   as a native process is ended by `SIGPIPE`.
//!
//! Wasmtime has no hook to count or skip what its stdin stream hands out, hence these
//! thin wrappers around its streams.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Largest chunk skipped in one read.
const SKIP_CHUNK: usize = 64 * 1024;
/// What stdout and stderr say they take in one write (Wasmtime's own figure).
const WRITE_READY: usize = 64 * 1024;

/// What the guest did with this process's stdio: bytes of stdin consumed, whether a
/// write found its reader gone. Cheap to clone; clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct StdioTap(Arc<Tap>);

#[derive(Debug, Default)]
struct Tap {
    consumed: AtomicU64,
    /// Bytes of this process's stdin still to be skipped before the guest reads.
    skip: AtomicU64,
    broken: AtomicBool,
}

impl StdioTap {
    /// A tap for a guest that starts from the beginning of its input.
    pub fn new() -> StdioTap {
        StdioTap::default()
    }

    /// A tap for a restored guest that had consumed `consumed` bytes of its stdin:
    /// counting goes on from there, and the first `skip` bytes of this process's stdin
    /// are read and dropped before the guest is given any (`skip` is `consumed` when
    /// the same input is given again, 0 to give it from its start).
    pub fn resuming(consumed: u64, skip: u64) -> StdioTap {
        let tap = StdioTap::default();
        tap.0.consumed.store(consumed, Ordering::SeqCst);
        tap.0.skip.store(skip, Ordering::SeqCst);
        tap
    }

    /// Bytes of stdin the guest has been given, in all its runs.
    pub fn stdin_consumed(&self) -> u64 {
        self.0.consumed.load(Ordering::SeqCst)
    }

    /// Whether a write to stdout or stderr found the reader gone.
    pub fn broken_pipe(&self) -> bool {
        self.0.broken.load(Ordering::SeqCst)
    }

    pub(crate) fn stdin(&self) -> TappedStdin {
        TappedStdin(self.clone())
    }

    pub(crate) fn stdout(&self) -> TappedOutput {
        TappedOutput {
            stderr: false,
            tap: self.clone(),
        }
    }

    pub(crate) fn stderr(&self) -> TappedOutput {
        TappedOutput {
            stderr: true,
            tap: self.clone(),
        }
    }
}

/// This process's stdin, counted.
pub(crate) struct TappedStdin(StdioTap);

impl IsTerminal for TappedStdin {
    fn is_terminal(&self) -> bool {
        std::io::IsTerminal::is_terminal(&std::io::stdin())
    }
}

impl StdinStream for TappedStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(CountingInput {
            inner: StdinStream::p2_stream(&std::io::stdin()),
            tap: self.0.clone(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        // Only preview 3 reads this; Tern runs preview 1 guests.
        StdinStream::async_stream(&std::io::stdin())
    }
}

struct CountingInput {
    inner: Box<dyn InputStream>,
    tap: StdioTap,
}

impl CountingInput {
    fn given(&self, bytes: &Bytes) {
        self.tap
            .0
            .consumed
            .fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }

    /// Drops what is left to skip, blocking until it has been read. Input that ends
    /// first is reported once; the guest then reads end-of-file, as it would have.
    async fn skip_pending(&mut self) -> StreamResult<()> {
        let skip = &self.tap.0.skip;
        let mut dropped = 0u64;
        loop {
            let left = skip.load(Ordering::SeqCst);
            if left == 0 {
                return Ok(());
            }
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(SKIP_CHUNK);
            match self.inner.blocking_read(want).await {
                Ok(b) => {
                    dropped += b.len() as u64;
                    skip.fetch_sub(b.len() as u64, Ordering::SeqCst);
                }
                Err(e) => {
                    skip.store(0, Ordering::SeqCst);
                    tracing::warn!(
                        "stdin ended after {dropped} of the {} bytes the guest had already read; it reads end-of-file",
                        dropped + left
                    );
                    return Err(e);
                }
            }
        }
    }
}

#[wasmtime_wasi::async_trait]
impl InputStream for CountingInput {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        // A non-blocking read drops what it can of the bytes to skip and reports
        // nothing ready until they are gone.
        let left = self.tap.0.skip.load(Ordering::SeqCst);
        if left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(SKIP_CHUNK);
            let b = self.inner.read(want)?;
            self.tap.0.skip.fetch_sub(b.len() as u64, Ordering::SeqCst);
            return Ok(Bytes::new());
        }
        let b = self.inner.read(size)?;
        self.given(&b);
        Ok(b)
    }

    async fn blocking_read(&mut self, size: usize) -> StreamResult<Bytes> {
        self.skip_pending().await?;
        let b = self.inner.blocking_read(size).await?;
        self.given(&b);
        Ok(b)
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await;
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CountingInput {
    async fn ready(&mut self) {
        self.inner.ready().await;
    }
}

/// This process's stdout or stderr, reporting a gone reader as `EPIPE`.
pub(crate) struct TappedOutput {
    stderr: bool,
    tap: StdioTap,
}

impl IsTerminal for TappedOutput {
    fn is_terminal(&self) -> bool {
        if self.stderr {
            std::io::IsTerminal::is_terminal(&std::io::stderr())
        } else {
            std::io::IsTerminal::is_terminal(&std::io::stdout())
        }
    }
}

impl StdoutStream for TappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(PipeOutput {
            stderr: self.stderr,
            tap: self.tap.clone(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only preview 3 writes through this; Tern runs preview 1 guests.
        if self.stderr {
            StdoutStream::async_stream(&std::io::stderr())
        } else {
            StdoutStream::async_stream(&std::io::stdout())
        }
    }
}

struct PipeOutput {
    stderr: bool,
    tap: StdioTap,
}

impl PipeOutput {
    fn result(&self, r: std::io::Result<()>) -> StreamResult<()> {
        r.map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.tap.0.broken.store(true, Ordering::SeqCst);
                // Raw, so that WASI maps it to its `pipe` errno.
                StreamError::LastOperationFailed(
                    std::io::Error::from_raw_os_error(libc::EPIPE).into(),
                )
            } else {
                StreamError::LastOperationFailed(e.into())
            }
        })
    }
}

impl OutputStream for PipeOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let r = if self.stderr {
            std::io::stderr().write_all(&bytes)
        } else {
            std::io::stdout().write_all(&bytes)
        };
        self.result(r)
    }

    fn flush(&mut self) -> StreamResult<()> {
        let r = if self.stderr {
            std::io::stderr().flush()
        } else {
            std::io::stdout().flush()
        };
        self.result(r)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // As Wasmtime's own stdio streams: writes block, so any size is ready.
        Ok(WRITE_READY)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PipeOutput {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write whose reader has gone is `EPIPE` to the guest (Wasmtime's streams say
    /// `EIO`), and raises the tap's flag; other errors pass through as they are.
    #[test]
    fn a_gone_reader_is_epipe_and_raises_the_flag() {
        let tap = StdioTap::new();
        let out = PipeOutput {
            stderr: false,
            tap: tap.clone(),
        };
        let err = out
            .result(Err(std::io::ErrorKind::BrokenPipe.into()))
            .expect_err("broken pipe");
        let StreamError::LastOperationFailed(e) = err else {
            panic!("not an I/O failure: {err:?}");
        };
        let io = e.downcast_ref::<std::io::Error>().expect("an io::Error");
        assert_eq!(io.raw_os_error(), Some(libc::EPIPE));
        assert!(tap.broken_pipe());

        let tap = StdioTap::new();
        let out = PipeOutput {
            stderr: true,
            tap: tap.clone(),
        };
        assert!(
            out.result(Err(std::io::ErrorKind::StorageFull.into()))
                .is_err()
        );
        assert!(!tap.broken_pipe(), "only a gone reader is a broken pipe");
    }

    #[test]
    fn a_resumed_tap_counts_on() {
        let tap = StdioTap::resuming(1024, 1024);
        assert_eq!(tap.stdin_consumed(), 1024);
        assert_eq!(tap.0.skip.load(Ordering::SeqCst), 1024);
    }
}
