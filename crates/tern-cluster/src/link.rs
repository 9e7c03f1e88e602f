//! Node-to-node links: every node listens on a link address, and measures the round trip
//! to every other node by pinging it there, over the same path a migration to it will
//! take. Latency is measured, never declared.
//!
//! A ping is 16 bytes: the magic `TERNPING` and an 8-byte nonce, echoed back as they
//! came. The listener reads exactly 16 bytes at a time, each within [`IDLE_TIMEOUT`],
//! from a peer, so garbage, floods and stalls cost it one short-lived connection each.
//!
//! Round trips are measured as ping tools measure them: a [`Prober`] keeps one
//! connection per peer open (so no sample counts a connection's set-up), and
//! [`Measured`] reports a low percentile ([`PERCENTILE`]) of the last [`WINDOW`]
//! samples, so a sample delayed by a busy machine's scheduler does not count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What a ping starts with.
const MAGIC: &[u8; 8] = b"TERNPING";
/// How long a ping (connect, send, echo) may take before the peer counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the listener keeps a connection on which no ping comes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Samples per peer a round trip is taken from.
pub const WINDOW: usize = 20;
/// The percentile of the window reported as the round trip.
pub const PERCENTILE: f64 = 0.1;
/// Samples a peer's window needs before its round trip is reported: the first pings
/// after a node starts meet a machine still busy starting the others.
pub const MIN_SAMPLES: usize = 5;
/// Pings in a row a peer may miss before its round trip is forgotten.
const MISSES: u32 = 3;

/// Answers pings on `listener` until the task is dropped.
pub async fn answer(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            // One ping after another on the connection; anything else ends it.
            let mut buf = [0u8; 16];
            while let Ok(Ok(_)) =
                tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut buf)).await
            {
                if &buf[..8] != MAGIC || stream.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// One round trip to `addr` over a fresh connection, connect excluded; `None` when the
/// peer is unreachable or answers wrongly within [`PING_TIMEOUT`].
pub async fn ping(addr: &str) -> Option<Duration> {
    Prober::new(addr.to_owned()).probe().await
}

/// Pings one peer over a connection kept open between pings; a failed ping closes it,
/// and the next one connects again.
#[derive(Debug)]
pub struct Prober {
    addr: String,
    stream: Option<TcpStream>,
}

impl Prober {
    pub fn new(addr: String) -> Prober {
        Prober { addr, stream: None }
    }

    /// Where it pings.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One round trip, connect excluded; `None` when the peer is unreachable or answers
    /// wrongly within [`PING_TIMEOUT`].
    pub async fn probe(&mut self) -> Option<Duration> {
        let rtt = tokio::time::timeout(PING_TIMEOUT, async {
            if self.stream.is_none() {
                let s = TcpStream::connect(&self.addr).await.ok()?;
                s.set_nodelay(true).ok()?;
                self.stream = Some(s);
            }
            let s = self.stream.as_mut()?;
            let mut msg = [0u8; 16];
            msg[..8].copy_from_slice(MAGIC);
            msg[8..].copy_from_slice(&rand_nonce().to_le_bytes());
            let start = Instant::now();
            s.write_all(&msg).await.ok()?;
            let mut back = [0u8; 16];
            s.read_exact(&mut back).await.ok()?;
            (back == msg).then(|| start.elapsed())
        })
        .await
        .ok()
        .flatten();
        if rtt.is_none() {
            self.stream = None;
        }
        rtt
    }
}

/// A nonce that differs between pings: the clock's nanoseconds are enough to tell an
/// echo of this ping from a stale one.
fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Round trips a node measured: the last [`WINDOW`] samples per peer.
#[derive(Debug, Default, Clone)]
pub struct Measured {
    samples: BTreeMap<String, (std::collections::VecDeque<f64>, u32)>,
}

impl Measured {
    /// Adds a sample for `peer`, or a miss when it did not answer: after [`MISSES`] in
    /// a row its round trip is forgotten.
    pub fn record(&mut self, peer: &str, sample: Option<Duration>) {
        let (window, misses) = self.samples.entry(peer.to_owned()).or_default();
        match sample {
            Some(d) => {
                *misses = 0;
                if window.len() == WINDOW {
                    window.pop_front();
                }
                window.push_back(d.as_secs_f64() * 1e3);
            }
            None => {
                *misses += 1;
                if *misses >= MISSES {
                    self.samples.remove(peer);
                }
            }
        }
    }

    /// Forgets every peer not in `peers`.
    pub fn retain(&mut self, peers: impl Fn(&str) -> bool) {
        self.samples.retain(|p, _| peers(p));
    }

    /// Each peer's round trip in ms: the [`PERCENTILE`] of its window, once it holds
    /// [`MIN_SAMPLES`].
    pub fn rtt_ms(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|(_, (w, _))| w.len() >= MIN_SAMPLES)
            .map(|(p, (w, _))| {
                let mut sorted: Vec<f64> = w.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let i = ((sorted.len() - 1) as f64 * PERCENTILE).round() as usize;
                (p.clone(), sorted[i])
            })
            .collect()
    }
}

/// Whether `host` (a host name or an IP address, IPv6 in brackets or not) is this
/// machine's loopback: `localhost`, 127.0.0.0/8 or ::1. What crosses no network needs
/// no TLS.
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_named_loopback_and_no_other() {
        for h in ["localhost", "127.0.0.1", "127.3.2.1", "::1", "[::1]"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "edge.example",
            "localhost.example",
            "",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[tokio::test]
    async fn pings_are_echoed_and_garbage_is_dropped() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let server = tokio::spawn(answer(l));
        let rtt = ping(&addr).await.expect("an answer");
        assert!(rtt < Duration::from_millis(500), "{rtt:?}");
        // Garbage: the listener drops the connection, and still answers the next ping.
        let mut g = TcpStream::connect(&addr).await.expect("connect");
        g.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
        let mut rest = Vec::new();
        let _ = g.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "{rest:?}");
        assert!(ping(&addr).await.is_some());
        // Nobody there.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr").to_string();
        drop(closed);
        assert_eq!(ping(&gone).await, None);
        server.abort();
    }

    #[tokio::test]
    async fn a_prober_keeps_its_connection_and_reconnects_after_a_failure() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let server = tokio::spawn(answer(l));
        let mut p = Prober::new(addr.clone());
        for _ in 0..5 {
            assert!(p.probe().await.is_some());
        }
        let local = p.stream.as_ref().and_then(|s| s.local_addr().ok());
        assert!(p.probe().await.is_some());
        assert_eq!(
            p.stream.as_ref().and_then(|s| s.local_addr().ok()),
            local,
            "one connection for every ping"
        );
        server.abort();
        // A peer that answers one ping, then hangs up and stops listening: the ping
        // after fails and closes the connection, and the next finds nobody there.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut p = Prober::new(l.local_addr().expect("addr").to_string());
        let once = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut buf = [0u8; 16];
            s.read_exact(&mut buf).await.expect("ping");
            s.write_all(&buf).await.expect("echo");
        });
        assert!(p.probe().await.is_some());
        once.await.expect("the peer ends");
        assert_eq!(p.probe().await, None);
        assert!(p.stream.is_none());
        assert_eq!(p.probe().await, None);
    }

    #[test]
    fn the_round_trip_is_a_low_percentile_and_silent_peers_are_forgotten() {
        let mut m = Measured::default();
        for _ in 1..MIN_SAMPLES {
            m.record("edge", Some(Duration::from_millis(20)));
        }
        assert!(m.rtt_ms().is_empty(), "too few samples to say");
        // A steady 20 ms with a few samples a busy machine delayed.
        for i in 0..WINDOW {
            let ms = if i % 4 == 0 { 35 } else { 20 };
            m.record("edge", Some(Duration::from_millis(ms)));
        }
        assert_eq!(m.rtt_ms()["edge"], 20.0, "{:?}", m.rtt_ms());
        // The window slides: old samples leave it.
        for _ in 0..WINDOW {
            m.record("edge", Some(Duration::from_millis(40)));
        }
        assert_eq!(m.rtt_ms()["edge"], 40.0);
        m.record("edge", None);
        m.record("edge", None);
        assert!(
            m.rtt_ms().contains_key("edge"),
            "two misses are not silence"
        );
        m.record("edge", None);
        assert!(m.rtt_ms().is_empty());
    }
}
