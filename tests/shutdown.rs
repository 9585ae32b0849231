//! Graceful shutdown: on the signal, health flips to NOT_SERVING before the server stops,
//! `run` returns cleanly, and the port stops answering.

mod common;

use std::time::Duration;

use banditd::grpc::SERVICE_NAME;
use common::{TestServer, fixed, test_config};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A health watcher sees SERVING, then NOT_SERVING after the signal; then `run` returns Ok.
#[tokio::test]
async fn health_flips_to_not_serving_then_stops() {
    let mut server = TestServer::start(test_config()).await;
    let mut bandit = server.client().await;
    bandit
        .choose_arm(fixed("wheel", vec![0.0, 0.5]))
        .await
        .unwrap();

    let channel = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    server.signal_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("no health update");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);

    // The open watch stream holds the drain open until the drain timeout (1 s in tests).
    tokio::time::timeout(Duration::from_secs(30), server.join())
        .await
        .expect("server did not stop")
        .unwrap();
    assert!(
        bandit
            .choose_arm(fixed("wheel", vec![0.0, 0.5]))
            .await
            .is_err(),
        "still answering after shutdown"
    );
}

/// With no open streams, shutdown does not wait for the drain timeout.
#[tokio::test]
async fn idle_server_stops_promptly() {
    let mut config = test_config();
    config.server.drain_timeout_ms = 60_000;
    let server = TestServer::start(config).await;
    let mut bandit = server.client().await;
    bandit
        .choose_arm(fixed("wheel", vec![0.0, 0.5]))
        .await
        .unwrap();
    drop(bandit);
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("shutdown waited for the drain timeout")
        .unwrap();
}
