//! An emulated network link: a TCP relay on loopback that delays every byte by a fixed
//! one-way latency and lets it through no faster than a set rate, in both directions.
//! `tern up` gives each pair of sites one ([`ContinuumConfig::links`](crate::up::ContinuumConfig)),
//! and a node sends every byte for a node of another site through it (pings and
//! migration streams alike); `tern bench migration` measures migrations over one.
//!
//! Linux's `tc netem` in a network namespace is the usual tool, but it needs the
//! `sch_netem` kernel module, which machines of this kind (and many containers) lack, and
//! root. The relay runs anywhere and models the same two things a migration feels:
//! serialisation at the link's rate, then propagation delay. Its buffer is bounded (about
//! two bandwidth-delay products), so a sender is held back as by a real bottleneck.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

/// Bytes read at a time, and so the granularity of the emulation.
const CHUNK: usize = 16 * 1024;

/// A link's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Bits per second, each direction.
    pub rate: u64,
    /// One-way propagation delay.
    pub delay: Duration,
}

impl Shape {
    /// A link whose round trip is `rtt_ms` (half of it each way) at `mbit` Mbit/s.
    pub fn of_rtt(rtt_ms: f64, mbit: f64) -> Shape {
        Shape {
            rate: (mbit * 1e6).max(1.0) as u64,
            delay: Duration::from_secs_f64(rtt_ms.max(0.0) / 2e3),
        }
    }

    /// The round trip it adds, in milliseconds.
    pub fn rtt_ms(&self) -> f64 {
        self.delay.as_secs_f64() * 2e3
    }

    /// Chunks in flight per direction: two bandwidth-delay products, at least 4.
    fn buffer_chunks(&self) -> usize {
        let bdp = self.rate as f64 / 8.0 * self.delay.as_secs_f64();
        ((2.0 * bdp / CHUNK as f64).ceil() as usize).max(4)
    }

    /// Time to put `bytes` on the wire.
    fn serialise(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 8.0 / self.rate as f64)
    }
}

/// A relay listening on loopback that forwards every connection to a target through an
/// emulated link. It takes new connections until it is dropped; those it has carry on
/// to their end.
#[derive(Debug)]
pub struct Link {
    /// Address to connect to instead of the target.
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

impl Link {
    /// Starts a relay to `target` with `shape`.
    ///
    /// # Errors
    /// When no loopback port or thread can be had.
    pub fn start(target: String, shape: Shape) -> std::io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::Builder::new().name("link".into()).spawn(move || {
            for client in listener.incoming().flatten() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        direction(from, to, shape);
                    }
                }
            }
        })?;
        Ok(Link { addr, stop })
    }
}

/// Forwards `from` to `to` through the link: a reader thread timestamps chunks into a
/// bounded queue, a writer thread delivers each once it has been serialised at the
/// link's rate and has travelled the delay.
fn direction(mut from: TcpStream, mut to: TcpStream, shape: Shape) {
    let (tx, rx): (SyncSender<(Instant, Vec<u8>)>, Receiver<_>) =
        sync_channel(shape.buffer_chunks());
    let _ = thread::Builder::new()
        .name("link-in".into())
        .spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    let _ = thread::Builder::new()
        .name("link-out".into())
        .spawn(move || {
            let mut wire_free = Instant::now();
            for (arrived, chunk) in rx {
                let sent = wire_free.max(arrived) + shape.serialise(chunk.len());
                wire_free = sent;
                let deliver = sent + shape.delay;
                if let Some(wait) = deliver.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A megabyte through a 100 Mbit/s, 20 ms link takes its serialisation time plus
    /// the delay, and arrives intact; an echo shows the round trip.
    #[test]
    fn bytes_arrive_intact_no_faster_than_the_link_allows() {
        let shape = Shape {
            rate: 100_000_000,
            delay: Duration::from_millis(20),
        };
        let server = TcpListener::bind("127.0.0.1:0").expect("binds");
        let target = server.local_addr().expect("addr").to_string();
        let echo = thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accepts");
            let mut got = Vec::new();
            let mut buf = [0u8; 65536];
            while got.len() < 1 << 20 {
                let n = s.read(&mut buf).expect("reads");
                assert!(n > 0, "stream ended early");
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"ok").expect("answers");
            got
        });
        let link = Link::start(target, shape).expect("starts");
        let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 131 + 7) as u8).collect();
        let started = Instant::now();
        let mut c = TcpStream::connect(&link.addr).expect("connects");
        c.write_all(&data).expect("writes");
        let mut answer = [0u8; 2];
        c.read_exact(&mut answer).expect("answer");
        let took = started.elapsed();
        assert_eq!(&answer, b"ok");
        assert_eq!(echo.join().expect("echo"), data);
        // 8 Mbit at 100 Mbit/s is 84 ms; plus 20 ms there and 20 ms back.
        let floor = shape.serialise(data.len()) + 2 * shape.delay;
        assert!(took >= floor, "{took:?} < {floor:?}");
    }
}
