//! The gRPC transport: the only module that knows tonic and the generated code. It assembles
//! the router (the bandit service, `grpc.health.v1`, server reflection).

mod auth;
mod convert;
mod service;

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::Router};
use tonic_health::server::HealthReporter;

pub use service::BanditGrpc;

use crate::{
    config::{Config, TlsConfig},
    engine::Engine,
    error::Error,
    proto,
};

pub use auth::{Role, Tokens};
pub use convert::{MAX_STATUS_TEXT_BYTES, code_name};

/// The full name of the bandit service, as health checks name it.
pub const SERVICE_NAME: &str = "banditd.v1.BanditService";

/// Builds the router (limits, keepalive, TLS) and the health reporter (every service starts
/// NOT_SERVING). The bandit service answers UNAVAILABLE until `engine` is set.
///
/// # Errors
/// A token or TLS file cannot be read or is invalid.
pub async fn router(
    engine: Arc<OnceLock<Arc<Engine>>>,
    config: &Config,
) -> Result<(Router, HealthReporter), Error> {
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
    let bandit = proto::bandit_service_server::BanditServiceServer::new(BanditGrpc::new(
        engine,
        tokens,
        server.max_in_flight,
    ))
    .max_decoding_message_size(server.max_message_bytes);
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
        .http2_keepalive_timeout(secs(server.keepalive_timeout_secs));
    if let Some(age) = secs(server.max_connection_age_secs) {
        builder = builder.max_connection_age(age);
    }
    if let Some(tls) = tls_config(&config.tls)? {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Internal(format!("tls: {e}")))?;
    }
    let router = builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bandit);
    Ok((router, reporter))
}

/// The rustls configuration from PEM files, if TLS is configured.
fn tls_config(tls: &TlsConfig) -> Result<Option<ServerTlsConfig>, Error> {
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::Internal(format!("tls: cannot read {}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &tls.client_ca_file {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
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
