//! The gRPC transport: the only module that knows tonic and the generated code. It assembles
//! the router (the bandit service behind its token check, `grpc.health.v1`, server
//! reflection) and the stream of accepted connections (cap, handshake deadline, TLS).

mod auth;
mod incoming;
mod service;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::Stream;
use tonic::transport::{Server, server::Router};
use tonic_health::server::HealthReporter;

pub use service::BanditGrpc;

use crate::{
    api::{self, Api, Tokens},
    config::{Config, ServerConfig, TlsConfig},
    error::Error,
    proto,
};

pub use crate::api::{MAX_STATUS_TEXT_BYTES, Role, code_name};

/// The full name of the bandit service, as health checks name it.
pub const SERVICE_NAME: &str = "banditd.v1.BanditService";

/// Builds the router (limits, keepalive, HTTP/2 windows, tokens) and the health reporter
/// (every service starts NOT_SERVING). The bandit service answers UNAVAILABLE until `api`'s
/// engine is set.
///
/// # Errors
/// A token file cannot be read or holds no token.
pub async fn router(api: Api, config: &Config) -> Result<(Router, HealthReporter), Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, false).await;
    // Both reflection versions: grpcurl asks for v1, older clients (ghz) for v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error =
        |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let server = &config.server;
    let tokens = Tokens::load(&config.auth)?;
    if !tokens.enabled() {
        tracing::info!("no tokens configured: calls are not authenticated");
    }
    let bandit = auth::Authenticated::new(
        proto::bandit_service_server::BanditServiceServer::new(BanditGrpc::new(api))
            .max_decoding_message_size(server.max_message_bytes),
        tokens,
    );
    let router = server_builder(server)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bandit);
    Ok((router, reporter))
}

/// The tonic server with `server`'s transport settings: per-connection call and stream
/// limits, load shedding, the request timeout, keepalive, header and window sizes, and the
/// connection age. `examples/noop_server` serves with the same settings, so that the no-op
/// baseline pays for the same transport work as banditd.
pub fn server_builder(server: &ServerConfig) -> Server {
    let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let per_connection = server.max_in_flight_per_connection;
    let mut builder = Server::builder()
        .concurrency_limit_per_connection(per_connection)
        // The same limit on HTTP/2 streams (SETTINGS_MAX_CONCURRENT_STREAMS; tonic sets none).
        // The call limit above ends when a handler returns, but a stream lasts until its
        // response is delivered: a client that never reads kept every response it asked for
        // in memory (about 8 KiB each, without bound, in tests/soak.rs). Clients queue calls
        // past it on their side; streams opened anyway are refused.
        .max_concurrent_streams(u32::try_from(per_connection).unwrap_or(u32::MAX))
        .load_shed(true)
        .timeout(Duration::from_millis(server.request_timeout_ms))
        .http2_keepalive_interval(secs(server.keepalive_interval_secs))
        .http2_keepalive_timeout(secs(server.keepalive_timeout_secs))
        // What a connection may hold before the token is checked (one header block per
        // stream) and before the handlers read it (the windows): with `max_connections`,
        // this bounds the memory of streams waiting for their body.
        .http2_max_header_list_size(server.max_header_list_bytes)
        .initial_connection_window_size(server.connection_window_bytes)
        .initial_stream_window_size(server.stream_window_bytes);
    if let Some(age) = secs(server.max_connection_age_secs) {
        builder = builder.max_connection_age(age);
    }
    builder
}

/// The connections `listener` accepts, at most `max_connections` open at once, each past its
/// TLS handshake (if configured) and HTTP/2 preface within `server.handshake_timeout_ms`.
///
/// # Errors
/// A TLS file cannot be read or is invalid.
pub(crate) fn incoming(
    listener: TcpListener,
    config: &Config,
    max_connections: usize,
) -> Result<impl Stream<Item = Result<incoming::Conn, std::io::Error>> + use<>, Error> {
    let accept = incoming::AcceptConfig {
        max_connections,
        handshake_timeout: Duration::from_millis(config.server.handshake_timeout_ms),
        tls: tls_acceptor(&config.tls)?,
    };
    Ok(incoming::incoming(listener, accept))
}

/// The rustls configuration of `tls`, if configured, speaking HTTP/2 only (ALPN `h2`).
fn tls_acceptor(tls: &TlsConfig) -> Result<Option<TlsAcceptor>, Error> {
    let Some(mut server) = api::tls_server_config(tls)? else {
        return Ok(None);
    };
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Sets the overall status ("") and the bandit service's status.
pub async fn set_health(reporter: &HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}
