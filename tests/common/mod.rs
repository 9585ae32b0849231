//! A real banditd on 127.0.0.1 port 0 with its own temporary data directory, stopped by a
//! oneshot.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use banditd::{
    Config, Error,
    config::DurabilityMode,
    proto::{
        Arm, ChooseArmRequest, ReportRewardRequest, bandit_service_client::BanditServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), Error>>,
    /// The data directory, removed when the server is dropped (unless the test gave its own).
    _data: Option<tempfile::TempDir>,
}

/// The embedded default with a short drain timeout and periodic durability (no fsync per
/// reward: tests that are not about durability should not wait for the disk).
pub fn test_config() -> Config {
    let mut config = Config::embedded_default();
    config.server.drain_timeout_ms = 1_000;
    config.storage.durability = DurabilityMode::Periodic;
    config
}

impl TestServer {
    /// Starts a server and waits until it is ready; a config still pointing at the default
    /// `data` directory gets a fresh temporary one instead.
    pub async fn start(config: Config) -> Self {
        let server = Self::spawn(config).await;
        server.wait_ready().await;
        server
    }

    /// Starts a server without waiting for recovery.
    pub async fn spawn(mut config: Config) -> Self {
        let data = (config.storage.data_dir == Path::new("data")).then(|| {
            let dir = tempfile::tempdir().unwrap();
            config.storage.data_dir = dir.path().to_owned();
            dir
        });
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
            _data: data,
        }
    }

    /// Starts a server with its HTTP/JSON face on a port of its own (port 0) and waits until
    /// it is ready; returns the server and the HTTP address.
    pub async fn start_with_http(mut config: Config) -> (Self, SocketAddr) {
        let data = (config.storage.data_dir == Path::new("data")).then(|| {
            let dir = tempfile::tempdir().unwrap();
            config.storage.data_dir = dir.path().to_owned();
            dir
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, http_addr) = (listener.local_addr().unwrap(), http.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(banditd::server::run_with_http(
            config,
            listener,
            Some(http),
            async {
                let _ = rx.await;
            },
        ));
        let server = Self {
            addr,
            shutdown: Some(tx),
            handle,
            _data: data,
        };
        server.wait_ready().await;
        (server, http_addr)
    }

    /// The overall status gRPC health reports now.
    pub async fn health(&self) -> ServingStatus {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    }

    /// Waits (at most 30 s) until recovery is done and health says SERVING.
    pub async fn wait_ready(&self) {
        for _ in 0..3000 {
            if self.health().await == ServingStatus::Serving {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server not ready after 30 s");
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
        self.signal_shutdown();
        self.join().await
    }

    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn join(mut self) -> Result<(), Error> {
        (&mut self.handle).await.unwrap()
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

/// The load generator binary of this build.
pub const LOADGEN: &str = env!("CARGO_BIN_EXE_banditd-loadgen");

/// The load generator as a command with `args`, stdin closed.
pub fn loadgen_command(args: &[&str]) -> Command {
    let mut command = Command::new(LOADGEN);
    command.args(args).stdin(Stdio::null());
    command
}

/// Runs the load generator; panics with its stderr if it fails.
pub fn loadgen(args: &[String]) -> std::process::Output {
    let output = std::process::Command::new(LOADGEN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot run banditd-loadgen");
    assert!(
        output.status.success(),
        "banditd-loadgen {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A `/metrics` scrape over plain HTTP/1.1.
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("cannot connect to /metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the series `name{labels}` in a scrape, if present.
pub fn series(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// The server binary of this build.
pub const BANDITD: &str = env!("CARGO_BIN_EXE_banditd");

/// A `banditd` process, killed on drop.
pub struct Banditd {
    pub child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// Its working directory: whatever it writes relative to it (its data directory)
    /// starts empty and is removed afterwards.
    _dir: tempfile::TempDir,
}

impl Drop for Banditd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago (bound to port 0, then released).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
}

/// Starts `banditd` with `args` (besides the listen addresses) on free ports, logging
/// warnings; retries (bounded) if a port was taken in between.
pub fn start_banditd(args: &[&str]) -> Banditd {
    start_banditd_logging(args, "warn")
}

/// [`start_banditd`] with `RUST_LOG` set to `rust_log`.
pub fn start_banditd_logging(args: &[&str], rust_log: &str) -> Banditd {
    for _attempt in 0..3 {
        let (grpc, metrics) = (free_addr(), free_addr());
        let dir = tempfile::tempdir().expect("cannot make a temporary directory");
        let child = Command::new(BANDITD)
            .current_dir(dir.path())
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start banditd");
        let mut server = Banditd {
            child,
            grpc,
            metrics,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_status)) = server.child.try_wait() {
                break; // exited: most likely a port race; try other ports
            }
            if TcpStream::connect(grpc).is_ok() && TcpStream::connect(metrics).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("banditd did not start listening within 3 attempts");
}
