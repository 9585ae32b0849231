//! A real banditd on 127.0.0.1 port 0, stopped by a oneshot.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use banditd::{
    Config, Error,
    proto::{
        Arm, ChooseArmRequest, ReportRewardRequest, bandit_service_client::BanditServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), Error>>,
}

/// The embedded default with a short drain timeout, as tests want.
pub fn test_config() -> Config {
    let mut config = Config::embedded_default();
    config.server.drain_timeout_ms = 1_000;
    config
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(banditd::run(config, listener, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> BanditServiceClient<Channel> {
        // The listener is bound before `run` starts, so the first connect succeeds.
        BanditServiceClient::connect(self.url()).await.unwrap()
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.unwrap()
    }

    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(self) -> Result<(), Error> {
        self.handle.await.unwrap()
    }
}

pub fn fixed(model: &str, context: Vec<f32>) -> ChooseArmRequest {
    ChooseArmRequest {
        model: model.into(),
        context,
        ..Default::default()
    }
}

pub fn arm(id: &str, features: Vec<f32>) -> Arm {
    Arm {
        id: id.into(),
        features,
    }
}

pub fn reward(model: &str, decision_id: &str, reward: f64) -> ReportRewardRequest {
    ReportRewardRequest {
        model: model.into(),
        decision_id: decision_id.into(),
        reward,
        regret: None,
    }
}
