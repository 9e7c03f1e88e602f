//! Node-to-node links: every node listens on a link address, and measures the round trip
//! to every other node by pinging it there, over the same path a migration to it will
//! take. Latency is measured, never declared.
//!
//! A ping is 16 bytes: the magic `TERNPING` and an 8-byte nonce, echoed back as they
//! came. The listener reads exactly 16 bytes within [`PING_TIMEOUT`] from a peer, so
//! garbage, floods and stalls cost it one short-lived connection each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// What a ping starts with.
const MAGIC: &[u8; 8] = b"TERNPING";
/// How long a ping (connect, send, echo) may take before the peer counts as unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// Weight of a new sample in a node's smoothed round trips.
const ALPHA: f64 = 0.3;

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
                tokio::time::timeout(PING_TIMEOUT, stream.read_exact(&mut buf)).await
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
    tokio::time::timeout(PING_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.set_nodelay(true).ok()?;
        let nonce: u64 = rand_nonce();
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(MAGIC);
        msg[8..].copy_from_slice(&nonce.to_le_bytes());
        let start = Instant::now();
        s.write_all(&msg).await.ok()?;
        let mut back = [0u8; 16];
        s.read_exact(&mut back).await.ok()?;
        (back == msg).then(|| start.elapsed())
    })
    .await
    .ok()
    .flatten()
}

/// A nonce that differs between pings: the clock's nanoseconds are enough to tell an
/// echo of this ping from a stale one.
fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Round trips a node measured, smoothed per peer.
#[derive(Debug, Default, Clone)]
pub struct Measured(pub BTreeMap<String, f64>);

impl Measured {
    /// Adds a sample for `peer`, or forgets the peer when it did not answer.
    pub fn record(&mut self, peer: &str, sample: Option<Duration>) {
        match sample {
            Some(d) => {
                let ms = d.as_secs_f64() * 1e3;
                let v = self.0.entry(peer.to_owned()).or_insert(ms);
                *v = (1.0 - ALPHA) * *v + ALPHA * ms;
            }
            None => {
                self.0.remove(peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn samples_are_smoothed_and_silent_peers_forgotten() {
        let mut m = Measured::default();
        m.record("edge", Some(Duration::from_millis(10)));
        m.record("edge", Some(Duration::from_millis(20)));
        assert!((m.0["edge"] - 13.0).abs() < 1e-9, "{:?}", m.0);
        m.record("edge", None);
        assert!(m.0.is_empty());
    }
}
