//! Migration streams between nodes, over mutually authenticated TLS. The instance that
//! sends and the one that receives speak the migration protocol in plain TCP on
//! loopback; their nodes carry it between them. The destination's node listens with
//! its certificate and lets through only the source node the move names; the source's
//! node connects with its own and goes on only to the destination the move names. Both
//! certificates are the continuum CA's, each for its node's NATS key
//! ([`tern_trust::tls::NodeTls`]). A peer that fails is refused with one line in the
//! node's log, and not a byte of it reaches the instance.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_trust::tls::{NodeTls, check_node_certificate, node_dns_name};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

/// How long a peer may take to connect and finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers a destination serves at once: more are closed as they come, so a flood of
/// connections holds no more than this.
const MAX_PEERS: usize = 8;
/// The copy buffers of a stream, each way: a migration sends megabytes at a time.
const BUFFER: usize = 256 << 10;

/// A destination's listener: it takes migrations from node `source` only, and hands
/// each to the instance listening on loopback. It ends when dropped.
#[derive(Debug)]
pub struct Inbound {
    /// Where the source connects (the node's link host, a port of its own).
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Inbound {
    /// Listens on `host` (any port) for node `source`, and forwards it to `instance`
    /// (`127.0.0.1:PORT`). Each refusal is logged with `app`.
    ///
    /// # Errors
    /// When `host` cannot be listened on.
    pub async fn start(
        tls: &NodeTls,
        host: &str,
        source: &str,
        instance: String,
        app: &str,
    ) -> std::io::Result<Inbound> {
        let listener = TcpListener::bind((host, 0)).await?;
        let addr = listener.local_addr()?.to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
        let (source, app) = (source.to_owned(), app.to_owned());
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEERS));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%app, %peer, "migration: {MAX_PEERS} peers connected; closing a new one");
                    continue;
                };
                let (acceptor, source, app, instance) = (
                    acceptor.clone(),
                    source.clone(),
                    app.clone(),
                    instance.clone(),
                );
                tokio::spawn(async move {
                    match admit(&acceptor, stream, &source).await {
                        Ok(tls) => {
                            tracing::info!(%app, %peer, %source, "migration: the source is in");
                            if let Err(e) = forward(tls, &instance).await {
                                tracing::warn!(%app, %peer, error = %e, "migration: the stream broke");
                            }
                        }
                        Err(reason) => tracing::warn!(
                            %app, %peer,
                            "migration: refused a peer that is not {source}: {reason}"
                        ),
                    }
                    drop(slot);
                });
            }
        });
        Ok(Inbound { addr, task })
    }
}

/// The TLS handshake of a peer, which must show node `source`'s certificate.
async fn admit(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    source: &str,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let _ = stream.set_nodelay(true);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()))?
        .map_err(|e| format!("TLS: {e}"))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("it showed no certificate")?;
    check_node_certificate(cert, source)?;
    Ok(tls)
}

/// Copies between the peer and the instance at `instance` until both ends close.
async fn forward<S>(mut peer: S, instance: &str) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut local = TcpStream::connect(instance).await?;
    let _ = local.set_nodelay(true);
    carry(&mut local, &mut peer).await
}

/// Copies between the instance's loopback end and the peer's TLS stream until both
/// close, then ends the TLS session with its close notice.
async fn carry<S>(local: &mut TcpStream, peer: &mut S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let copied = tokio::io::copy_bidirectional_with_sizes(local, peer, BUFFER, BUFFER).await;
    let _ = peer.shutdown().await;
    copied.map(|_| ())
}

/// A source's way out: a loopback listener its instance connects to, each connection
/// carried over TLS to node `destination` at its address. It ends when dropped.
#[derive(Debug)]
pub struct Outbound {
    /// Where the instance connects (`127.0.0.1:PORT`).
    pub addr: String,
    /// Why the last connection to the destination failed, if it did.
    failure: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Outbound {
    /// A way out to node `destination`, listening at `to`.
    ///
    /// # Errors
    /// When no loopback port can be listened on.
    pub async fn start(tls: &NodeTls, to: String, destination: &str) -> std::io::Result<Outbound> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?.to_string();
        let connector = tokio_rustls::TlsConnector::from(tls.client());
        let name = rustls::pki_types::ServerName::try_from(node_dns_name(destination))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let failure = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        let destination = destination.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((local, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (connector, name, to, destination, failed) = (
                    connector.clone(),
                    name.clone(),
                    to.clone(),
                    destination.clone(),
                    failed.clone(),
                );
                tokio::spawn(async move {
                    let _ = local.set_nodelay(true);
                    let peer = async {
                        let tcp = TcpStream::connect(&to).await.map_err(|e| e.to_string())?;
                        let _ = tcp.set_nodelay(true);
                        connector
                            .connect(name, tcp)
                            .await
                            .map_err(|e| format!("TLS: {e}"))
                    };
                    let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peer).await {
                        Ok(Ok(p)) => Ok(p),
                        Ok(Err(e)) => Err(format!("{destination} at {to} refused: {e}")),
                        Err(_) => Err(format!(
                            "{destination} at {to} did not answer within {} s",
                            HANDSHAKE_TIMEOUT.as_secs()
                        )),
                    };
                    let peer = match reason {
                        Ok(p) => p,
                        Err(reason) => {
                            tracing::warn!("migration: {reason}");
                            if let Ok(mut f) = failed.lock() {
                                *f = Some(reason);
                            }
                            return;
                        }
                    };
                    let (mut peer, mut local) = (peer, local);
                    if let Err(e) = carry(&mut local, &mut peer).await {
                        tracing::warn!(%destination, error = %e, "migration: the stream broke");
                    }
                });
            }
        });
        Ok(Outbound {
            addr,
            failure,
            task,
        })
    }

    /// Why the destination could not be reached or was refused, if it was.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}
