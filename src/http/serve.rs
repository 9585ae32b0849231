//! Serving the HTTP router: an accept loop with a connection cap, the TLS handshake (the
//! `[tls]` files, ALPN `h2` and `http/1.1`) under the handshake deadline, HTTP/1.1 or
//! HTTP/2 per connection (hyper-util's `auto`), and a graceful drain at shutdown.
//!
//! Why not `axum::serve`: it has no TLS, no connection cap and no header-read deadline, and
//! the gRPC port has all three. This is the same tokio-rustls tonic uses, so both ports
//! speak TLS through one implementation (`api::tls_server_config`).

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::{api, config::Config, error::Error};

/// After an accept error (no descriptor or memory left), wait this long before the next
/// accept instead of spinning; the gRPC port does the same (`grpc/incoming.rs`).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The future that serves `router` on `listener` until `stop` completes, then lets open
/// calls finish for at most `server.drain_timeout_ms`.
///
/// # Errors
/// A TLS file cannot be read or is invalid.
pub fn serve(
    listener: TcpListener,
    router: Router,
    config: &Config,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    let tls = api::tls_server_config(&config.tls)?.map(|mut tls| {
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(tls))
    });
    let server = &config.server;
    let handshake = Duration::from_millis(server.handshake_timeout_ms);
    let drain = Duration::from_millis(server.drain_timeout_ms);
    let max_connections = config.http.max_connections;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that opens a connection and sends its headers slowly (or never) is closed
    // after the same deadline gRPC gives a handshake.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake);
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(
            u32::try_from(server.max_in_flight_per_connection).unwrap_or(u32::MAX),
        )
        .max_header_list_size(server.max_header_list_bytes)
        .initial_connection_window_size(server.connection_window_bytes)
        .initial_stream_window_size(server.stream_window_bytes)
        .keep_alive_interval(secs(server.keepalive_interval_secs))
        .keep_alive_timeout(Duration::from_secs(server.keepalive_timeout_secs));
    Ok(async move {
        let slots = Arc::new(Semaphore::new(max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(stop);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!(%peer, max_connections, "http.max_connections reached: closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (builder, service) = (builder.clone(), TowerToHyperService::new(router.clone()));
            let (tls, watcher) = (tls.clone(), graceful.watcher());
            tokio::spawn(async move {
                let _slot = slot;
                let served = match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(tls) => match tokio::time::timeout(handshake, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake in time: closed");
                            return;
                        }
                    },
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            });
        }
        // Closing the listener first: new connections are refused while open ones drain.
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(drain) => {
                tracing::warn!(?drain, "HTTP calls still open after the drain timeout: closing them");
            }
        }
    })
}
