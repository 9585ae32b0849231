//! Accepting gRPC connections, before tonic sees them: a cap on how many are open, one
//! deadline for the handshake (the TLS handshake when configured, then the HTTP/2 preface),
//! and accept errors that are counted, logged at most once a second and backed off from
//! instead of retried in a tight loop.
//!
//! Why here and not in tonic: tonic's accept loop has no connection cap, and hyper waits for
//! the HTTP/2 preface without a deadline (keepalive pings start only after it), so a client
//! that connects and sends nothing holds a file descriptor for ever; at the open-file limit
//! every accept then fails, and so do the log's and the checkpoints' file opens.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics;

/// The HTTP/2 client connection preface (RFC 9113 §3.4) is 24 bytes.
const PREFACE_LEN: usize = 24;

/// After an accept error that will not clear by retrying at once (no file descriptor or
/// memory left), wait this long: long enough not to spin a core, short enough that a freed
/// descriptor is used promptly. The connection waits in the kernel's backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connections handed to tonic but not yet taken: tonic takes each at once, so a few suffice.
const HANDOFF_CAPACITY: usize = 64;

/// How connections are accepted.
#[derive(Clone)]
pub(crate) struct AcceptConfig {
    /// Most connections open at once, including those in their handshake.
    pub(crate) max_connections: usize,
    /// Deadline for TLS and the HTTP/2 preface.
    pub(crate) handshake_timeout: Duration,
    /// TLS, if configured.
    pub(crate) tls: Option<TlsAcceptor>,
}

/// Accepts on `listener` until the returned stream is dropped (tonic drops it when shutdown
/// begins, which closes the listening socket). Yields only connections that finished their
/// handshake; each holds one of `max_connections` slots until it closes.
pub(crate) fn incoming(
    listener: TcpListener,
    config: AcceptConfig,
) -> ReceiverStream<Result<Conn, io::Error>> {
    let (tx, rx) = mpsc::channel(HANDOFF_CAPACITY);
    metrics::connections_max(config.max_connections);
    tokio::spawn(accept_loop(listener, config, tx));
    ReceiverStream::new(rx)
}

/// Writes a log line at most once a second, saying how many it held back meanwhile.
#[derive(Debug, Default)]
struct Throttled {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttled {
    /// Calls `log` with the number held back since the last line, unless a line was written
    /// less than a second ago.
    fn log(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.held_back += 1;
            return;
        }
        log(self.held_back);
        self.held_back = 0;
        self.last = Some(now);
    }
}

/// The metric kind of an accept error, and whether to back off before the next accept.
fn accept_error_kind(e: &io::Error) -> (&'static str, bool) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => ("fd_limit", true),
        Some(libc::ENOBUFS | libc::ENOMEM) => ("no_memory", true),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EINTR) => {
            ("aborted", false)
        }
        _ => ("other", true),
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: AcceptConfig,
    tx: mpsc::Sender<Result<Conn, io::Error>>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (mut over_cap_log, mut error_log) = (Throttled::default(), Throttled::default());
    loop {
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                let (kind, back_off) = accept_error_kind(&e);
                metrics::accept_failed(kind);
                error_log.log(|held_back| {
                    tracing::error!(error = %e, kind, held_back, "cannot accept a gRPC connection");
                });
                if back_off {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            // Closing at once costs the client one round trip; it retries with backoff.
            drop(stream);
            metrics::connection_refused("limit");
            over_cap_log.log(|held_back| {
                tracing::warn!(
                    max_connections = config.max_connections,
                    held_back,
                    "connection cap reached: new connections are closed"
                );
            });
            continue;
        };
        let slot = Slot::new(permit);
        let (tls, timeout, tx) = (config.tls.clone(), config.handshake_timeout, tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, handshake(stream, tls)).await {
                Ok(Ok((io, preface))) => {
                    let info = TcpConnectInfo {
                        local_addr: io.tcp().local_addr().ok(),
                        remote_addr: Some(peer),
                    };
                    let conn = Conn {
                        preface,
                        read: 0,
                        io,
                        info,
                        _slot: slot,
                    };
                    // Fails only when the server is shutting down: the connection closes.
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(e)) => {
                    metrics::connection_refused("handshake_failed");
                    tracing::debug!(%peer, error = %e, "connection closed in its handshake");
                }
                Err(_) => {
                    metrics::connection_refused("handshake_timeout");
                    tracing::debug!(%peer, ?timeout, "no handshake in time: connection closed");
                }
            }
        });
    }
}

/// TLS (if configured), then the 24 bytes of the HTTP/2 preface. They are not checked here:
/// hyper answers a client that speaks something else.
async fn handshake(stream: TcpStream, tls: Option<TlsAcceptor>) -> io::Result<(Io, Vec<u8>)> {
    stream.set_nodelay(true)?;
    let mut io = match tls {
        Some(tls) => Io::Tls(Box::new(tls.accept(stream).await?)),
        None => Io::Plain(stream),
    };
    let mut preface = vec![0; PREFACE_LEN];
    io.read_exact(&mut preface).await?;
    Ok((io, preface))
}

/// One of the `max_connections` slots, held for a connection's life.
struct Slot(#[expect(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::connection_open(true);
        Self(permit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::connection_open(false);
    }
}

/// The socket, plain or TLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

/// A connection that finished its handshake: the preface read during it comes first, then
/// the socket. Closing it frees its slot.
pub(crate) struct Conn {
    preface: Vec<u8>,
    /// How much of `preface` hyper has read.
    read: usize,
    io: Io,
    info: TcpConnectInfo,
    _slot: Slot,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

/// Forwards an I/O call to whichever socket `$io` holds.
macro_rules! forward {
    ($io:expr, $s:ident => $call:expr) => {
        match $io {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $call
            }
            Io::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $call
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self.get_mut(), s => s.poll_read(cx, buf))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read < this.preface.len() {
            let rest = &this.preface[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(&mut self.get_mut().io, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(&mut self.get_mut().io, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(&mut self.get_mut().io, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(&mut self.get_mut().io, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of log lines becomes one line a second, with the count held back.
    #[test]
    fn throttled_log() {
        let mut throttled = Throttled::default();
        let mut lines = Vec::new();
        for _ in 0..1000 {
            throttled.log(|held_back| lines.push(held_back));
        }
        assert_eq!(lines, vec![0]);
        throttled.last = Some(Instant::now() - Duration::from_secs(2));
        throttled.log(|held_back| lines.push(held_back));
        assert_eq!(lines, vec![0, 999]);
    }

    /// Descriptor and memory exhaustion back off; a peer that left does not.
    #[test]
    fn accept_error_kinds() {
        let kind = |errno| accept_error_kind(&io::Error::from_raw_os_error(errno));
        assert_eq!(kind(libc::EMFILE), ("fd_limit", true));
        assert_eq!(kind(libc::ENFILE), ("fd_limit", true));
        assert_eq!(kind(libc::ENOBUFS), ("no_memory", true));
        assert_eq!(kind(libc::ECONNABORTED), ("aborted", false));
        assert_eq!(kind(libc::EINVAL), ("other", true));
    }
}
