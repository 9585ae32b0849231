//! The gRPC transport: the only module that knows tonic and the generated code. It assembles
//! the router (the bandit service, `grpc.health.v1`, server reflection).

mod convert;
mod service;

use std::sync::{Arc, OnceLock};

use tonic::transport::{Server, server::Router};
use tonic_health::server::HealthReporter;

pub use service::BanditGrpc;

use crate::{engine::Engine, error::Error, proto};

/// The full name of the bandit service, as health checks name it.
pub const SERVICE_NAME: &str = "banditd.v1.BanditService";

/// Builds the router and the health reporter (every service starts NOT_SERVING). The bandit
/// service answers UNAVAILABLE until `engine` is set.
///
/// # Errors
/// The reflection descriptor cannot be decoded (a build problem).
pub async fn router(engine: Arc<OnceLock<Arc<Engine>>>) -> Result<(Router, HealthReporter), Error> {
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
    let bandit = proto::bandit_service_server::BanditServiceServer::new(BanditGrpc::new(engine));
    let router = Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(bandit);
    Ok((router, reporter))
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
