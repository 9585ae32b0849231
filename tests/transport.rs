//! The transport against hostile and careless clients, on the real `banditd` binary:
//! - a flood of unauthenticated, half-sent streams is refused on its headers (the token is
//!   checked before any body is read) and the server's memory stays within what its limits
//!   allow;
//! - idle connections that never send the HTTP/2 preface, more than the open-file limit
//!   allows, are capped and timed out: connected clients keep working throughout, new ones
//!   are served again after the handshake timeout, and no file open fails;
//! - a configured token source that yields no token refuses the start;
//! - every documented metric series exists at start, before any call; an oversized message
//!   is counted; the text log has no colour codes when stderr is a file.
//!
//! `cargo test --test transport` runs them in about half a minute. The long flood
//! (`unauthenticated_flood_long`: 100 connections × 1000 streams, repeated for
//! `BANDITD_FLOOD_SECS`, 60 s by default) is manual:
//! `cargo test --release --test transport unauthenticated_flood_long -- --ignored --nocapture`.

mod common;

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use banditd::proto::{ChooseArmRequest, bandit_service_client::BanditServiceClient};
use common::{BANDITD, free_addr, scrape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Request, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;

/// A `banditd` process with its stderr in a file, killed on drop.
struct Server {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
    /// Its working directory (the data directory is under it), removed on drop.
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start one.
#[derive(Default)]
struct Start<'a> {
    /// TOML written to a file and passed as `--config`.
    config: Option<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    /// Soft and hard RLIMIT_NOFILE of the child.
    fd_limit: Option<u64>,
}

impl Server {
    /// Starts the binary and returns once both ports accept, or its exit status and log if it
    /// exits first.
    fn start(start: Start<'_>) -> Result<Self, (std::process::ExitStatus, String)> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("stderr.log");
        let (grpc, metrics) = (free_addr(), free_addr());
        let mut command = Command::new(BANDITD);
        command
            .current_dir(dir.path())
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .env("RUST_LOG", "info")
            .env_remove("BANDITD_TOKENS")
            .env_remove("BANDITD_ADMIN_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        if let Some(text) = start.config {
            let path = dir.path().join("banditd.toml");
            std::fs::write(&path, text).expect("write config");
            command.arg("--config").arg(path);
        }
        for (k, v) in &start.env {
            command.env(k, v);
        }
        if let Some(limit) = start.fd_limit {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the forked child.
            unsafe {
                command.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("cannot start banditd");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Err((status, std::fs::read_to_string(&log).unwrap_or_default()));
            }
            assert!(
                Instant::now() < deadline,
                "banditd not listening after 30 s"
            );
            // Only the metrics port is probed: a bare connection to the gRPC port would be
            // one of the idle connections this file is about.
            if TcpStream::connect(metrics).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            child,
            grpc,
            metrics,
            log,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A channel connected now (failing after `limit`).
    async fn channel(&self, limit: Duration) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(self.url())
            .expect("url")
            .connect_timeout(limit)
            .timeout(limit)
            .connect()
            .await
    }

    /// Starts the binary (failing the test with its log if it exits) and waits for SERVING.
    async fn serving(start: Start<'_>) -> Self {
        let server = Self::start(start)
            .unwrap_or_else(|(status, log)| panic!("banditd exited with {status}:\n{log}"));
        server.wait_serving().await;
        server
    }

    /// A bandit client on a channel of its own.
    async fn client(&self) -> BanditServiceClient<Channel> {
        BanditServiceClient::new(self.channel(Duration::from_secs(5)).await.expect("connect"))
    }

    /// Waits (at most 30 s) for health SERVING on a channel of its own.
    async fn wait_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(channel) = self.channel(Duration::from_secs(2)).await
                && serving(&channel).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("banditd not SERVING after 30 s:\n{}", self.logs());
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then the exit status (at most 30 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

async fn serving(channel: &Channel) -> bool {
    let mut health = HealthClient::new(channel.clone());
    let check = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    matches!(check, Ok(r) if r.get_ref().status() == ServingStatus::Serving)
}

fn decision() -> ChooseArmRequest {
    ChooseArmRequest {
        model: "wheel".into(),
        context: vec![0.25, -0.5],
        ..Default::default()
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The value of the series `name` whose labels include every `labels` pair, if present.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * KIB
}

// --- Raw HTTP/2, to send what no well-behaved client would (RFC 9113 §4.1, §6) ---

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_HEADERS: u8 = 0x4;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A ChooseArm HEADERS block without a token (HPACK, RFC 7541): :method POST and :scheme
/// http from the static table, then literals without indexing for :path (static 4),
/// :authority (static 1), content-type (static 31) and te.
fn call_headers(authority: &str) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(u8::try_from(s.len()).expect("short header"));
        out.extend_from_slice(s.as_bytes());
    }
    let mut block = vec![0x83, 0x86, 0x04];
    string(&mut block, "/banditd.v1.BanditService/ChooseArm");
    block.push(0x01);
    string(&mut block, authority);
    block.extend([0x0f, 0x10]);
    string(&mut block, "application/grpc");
    block.push(0x00);
    string(&mut block, "te");
    string(&mut block, "trailers");
    block
}

/// Opens `connections` connections, each opening `streams` ChooseArm streams without a token
/// that send their headers and never their body (no DATA, no END_STREAM: each stream waits for
/// a body that never comes; DATA frames this small would trip h2's own "too many small DATA
/// frames" guard and end the connection before any stream is served). Reads and discards
/// whatever the server sends. Returns the connections' tasks (abort to close).
fn flood(addr: SocketAddr, connections: usize, streams: u32) -> Vec<tokio::task::JoinHandle<()>> {
    let headers = call_headers(&addr.to_string());
    let mut bytes = PREFACE.to_vec();
    frame(&mut bytes, SETTINGS, 0, 0, &[]);
    for i in 0..streams {
        frame(&mut bytes, HEADERS, END_HEADERS, 2 * i + 1, &headers);
    }
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(socket) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let (mut read, mut write) = socket.into_split();
            let drain = tokio::spawn(async move {
                let mut sink = vec![0u8; 64 * 1024];
                while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            let _ = write.write_all(&bytes).await;
            // Hold the connection (and its half-sent streams) open until aborted.
            let _ = drain.await;
            std::future::pending::<()>().await;
        }));
    }
    tasks
}

/// The limits the flood runs against, and the memory they allow it.
struct FloodLimits {
    streams_per_connection: u64,
    max_header_list_bytes: u64,
    connection_window_bytes: u64,
}

impl FloodLimits {
    fn toml(&self) -> String {
        format!(
            r#"
[server]
max_in_flight_per_connection = {}
max_header_list_bytes = {}
connection_window_bytes = {}
stream_window_bytes = 65535
[storage]
durability = "periodic"
[[models]]
name = "wheel"
kind = "fixed_arms"
context_dim = 2
arms = ["0", "1", "2", "3", "4"]
"#,
            self.streams_per_connection, self.max_header_list_bytes, self.connection_window_bytes
        )
    }

    /// What `connections` flooding connections may add to the server's RSS: per connection,
    /// its unread body (the connection window), every stream it may have open at once
    /// (`max_in_flight_per_connection` = SETTINGS_MAX_CONCURRENT_STREAMS), each holding one
    /// header block (at most `max_header_list_bytes`) and h2's and hyper's stream state (under
    /// 2 KiB), and 256 KiB of socket buffers and connection state; plus 64 MiB of working
    /// memory no limit covers (allocator caches, thread stacks).
    fn budget(&self, connections: u64) -> u64 {
        let per_stream = self.max_header_list_bytes + 2 * KIB;
        let per_connection =
            self.connection_window_bytes + self.streams_per_connection * per_stream + 256 * KIB;
        connections * per_connection + 64 * MIB
    }
}

/// Floods for `rounds` rounds of `connections` × `streams` and checks the bound and the
/// counts; returns (baseline, max) RSS.
async fn run_flood(connections: usize, streams: u32, rounds: usize) {
    let limits = FloodLimits {
        streams_per_connection: u64::from(streams),
        max_header_list_bytes: 1024,
        connection_window_bytes: 65_535,
    };
    let config = limits.toml();
    let server = Server::serving(Start {
        config: Some(&config),
        env: vec![("BANDITD_TOKENS", "flood-test-token"), ("RUST_LOG", "warn")],
        ..Start::default()
    })
    .await;
    let channel = server
        .channel(Duration::from_secs(5))
        .await
        .expect("connect");
    let mut client = BanditServiceClient::new(channel.clone());
    for _ in 0..50 {
        client
            .choose_arm(with_token(decision(), "flood-test-token"))
            .await
            .expect("warm-up decision");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = rss(server.pid());
    let allowed = limits.budget(connections as u64);
    let mut max = baseline;
    for _ in 0..rounds {
        let tasks = flood(server.grpc, connections, streams);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            max = max.max(rss(server.pid()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Connected clients are served during the flood.
        client
            .choose_arm(with_token(decision(), "flood-test-token"))
            .await
            .expect("a decision during the flood");
        assert!(serving(&channel).await, "health during the flood");
        for task in tasks {
            task.abort();
        }
    }
    let text = scrape(server.metrics);
    let refused = metric(
        &text,
        "banditd_request_errors_total",
        &[
            ("transport", "grpc"),
            ("method", "ChooseArm"),
            ("code", "UNAUTHENTICATED"),
        ],
    )
    .unwrap_or(0.0);
    eprintln!(
        "flood {connections} connections x {streams} streams x {rounds} rounds: RSS baseline \
         {:.1} MiB, max {:.1} MiB, bound {:.1} MiB (baseline + {:.1}); {refused} streams \
         refused UNAUTHENTICATED",
        baseline as f64 / MIB as f64,
        max as f64 / MIB as f64,
        (baseline + allowed) as f64 / MIB as f64,
        allowed as f64 / MIB as f64,
    );
    // None of these streams ever finished its body: any refusal was made on the headers.
    assert!(
        refused >= connections as f64,
        "only {refused} flood streams were refused on their headers:\n{}",
        server
            .logs()
            .lines()
            .filter(|l| !l.contains("StreamId(") || l.contains("Reset") || l.contains("GoAway"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        max <= baseline + allowed,
        "RSS reached {:.1} MiB, above the bound of {:.1} MiB",
        max as f64 / MIB as f64,
        (baseline + allowed) as f64 / MIB as f64
    );
    let mut client =
        BanditServiceClient::new(server.channel(Duration::from_secs(5)).await.unwrap());
    client
        .choose_arm(with_token(decision(), "flood-test-token"))
        .await
        .expect("a decision after the flood");
}

/// 40 connections × 1000 half-sent unauthenticated streams: each is refused on its headers
/// (UNAUTHENTICATED, counted), RSS stays within the bound the limits imply, and the server
/// keeps deciding for a client with a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_flood_is_refused_on_headers() {
    run_flood(40, 1000, 1).await;
}

/// The issue's flood (100 connections × 1000 streams), repeated for `BANDITD_FLOOD_SECS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual: a minute long; run with --release --ignored --nocapture"]
async fn unauthenticated_flood_long() {
    let secs: usize = std::env::var("BANDITD_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    run_flood(100, 1000, secs.div_ceil(2)).await;
}

/// With 256 file descriptors, 400 connections that never send the HTTP/2 preface: past the
/// connection cap they are closed at once, the rest after the handshake timeout. A client
/// connected before keeps deciding and checking health throughout; new clients are served
/// again after the timeout; no accept or file open fails; the server stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_a_low_fd_limit() {
    let config = r#"
[server]
handshake_timeout_ms = 1000
[storage]
durability = "periodic"
[[models]]
name = "wheel"
kind = "fixed_arms"
context_dim = 2
arms = ["0", "1", "2", "3", "4"]
"#;
    let mut server = Server::serving(Start {
        config: Some(config),
        fd_limit: Some(256),
        ..Start::default()
    })
    .await;
    let channel = server
        .channel(Duration::from_secs(5))
        .await
        .expect("connect");
    let mut client = BanditServiceClient::new(channel.clone());
    client.choose_arm(decision()).await.expect("decision");

    // A connect that the kernel's accept queue cannot take waits for SYN retries: bounded.
    let idle: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect_timeout(&server.grpc, Duration::from_secs(1)).ok())
        .collect();
    assert!(
        idle.len() > 256,
        "only {} idle connections opened",
        idle.len()
    );
    // The connected client is served while the idle connections are held.
    for _ in 0..20 {
        client
            .choose_arm(decision())
            .await
            .expect("a decision while idle connections are held");
        assert!(
            serving(&channel).await,
            "health while idle connections are held"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A new client gets in once the handshake timeout has closed the idle ones.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fresh = loop {
        if let Ok(channel) = server.channel(Duration::from_millis(500)).await
            && serving(&channel).await
        {
            break channel;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection served 10 s after the idle flood:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    BanditServiceClient::new(fresh)
        .choose_arm(decision())
        .await
        .expect("a decision on a new connection");

    let text = scrape(server.metrics);
    let count = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(-1.0);
    let cap = count("banditd_connections_max", &[]);
    let over_cap = count("banditd_connections_refused_total", &[("reason", "limit")]);
    let timed_out = count(
        "banditd_connections_refused_total",
        &[("reason", "handshake_timeout")],
    );
    let fd_errors = count("banditd_accept_errors_total", &[("kind", "fd_limit")]);
    eprintln!(
        "fd limit 256: connection cap {cap}, {over_cap} closed over the cap, {timed_out} timed \
         out in their handshake, {fd_errors} accept errors for lack of descriptors"
    );
    assert!(cap > 0.0 && cap < 256.0, "connection cap {cap}");
    assert!(over_cap > 0.0, "no connection was closed over the cap");
    assert!(timed_out > 0.0, "no handshake timed out");
    assert_eq!(fd_errors, 0.0, "accept ran out of descriptors");
    drop(idle);
    let status = server.terminate();
    let logs = server.logs();
    assert!(status.success(), "banditd exited with {status}:\n{logs}");
    assert!(
        !logs.contains("Too many open files") && !logs.contains("os error 24"),
        "a file open failed:\n{logs}"
    );
}

/// A token file that holds only comments, or a token variable that holds no token, refuses
/// the start with a message naming it; a file with a token starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_token_source_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, "# one token per line\n\n# none yet\n").unwrap();
    let config = format!(
        "[auth]\ntokens_file = {:?}\n[[models]]\nname = \"wheel\"\nkind = \"fixed_arms\"\n\
         context_dim = 2\narms = [\"0\", \"1\"]\n",
        tokens.display().to_string()
    );
    // The token variable is read before anything listens; the file when the gRPC service is
    // built, after the metrics port is open: so the process may be seen listening first.
    let refused = |start: Start<'_>, names: &str| {
        let (status, log) = match Server::start(start) {
            Ok(mut server) => {
                let deadline = Instant::now() + Duration::from_secs(20);
                let status = loop {
                    if let Some(status) = server.child.try_wait().expect("wait") {
                        break status;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "banditd started:\n{}",
                        server.logs()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                };
                (status, server.logs())
            }
            Err(exit) => exit,
        };
        assert!(!status.success());
        assert!(log.contains(names) && log.contains("no token"), "{log}");
    };
    refused(
        Start {
            config: Some(&config),
            ..Start::default()
        },
        &tokens.display().to_string(),
    );
    refused(
        Start {
            env: vec![("BANDITD_TOKENS", " , ")],
            ..Start::default()
        },
        "BANDITD_TOKENS",
    );
    std::fs::write(&tokens, "# one token per line\nt0k3n\n").unwrap();
    let mut server = Server::serving(Start {
        config: Some(&config),
        ..Start::default()
    })
    .await;
    assert!(server.terminate().success());
}

/// Before any call, `/metrics` has every model's series (counters, gauges, histograms), the
/// request-error and connection series; a message over `max_message_bytes` is counted as
/// OUT_OF_RANGE; the text log written to a file has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exist_at_start_and_count_oversized_messages() {
    let config = r#"
[server]
max_message_bytes = 1024
[storage]
durability = "periodic"
[[models]]
name = "wheel"
kind = "fixed_arms"
context_dim = 2
arms = ["0", "1", "2", "3", "4"]
[[models]]
name = "items"
kind = "per_arm_features"
context_dim = 8
arm_feature_dim = 8
policy = "mc_dropout"
"#;
    let mut server = Server::serving(Start {
        config: Some(config),
        ..Start::default()
    })
    .await;
    let text = scrape(server.metrics);
    for model in ["wheel", "items"] {
        let m = [("model", model)];
        for name in [
            "banditd_rewards_total",
            "banditd_reward_sum",
            "banditd_regret_sum",
            "banditd_rewards_dropped_total",
            "banditd_learner_steps_total",
            "banditd_learner_steps_skipped_total",
            "banditd_learner_loss",
            "banditd_learner_lag_records",
            "banditd_replay_size",
            "banditd_pending_decisions",
            "banditd_pending_bytes",
            "banditd_decisions_evicted_total",
            "banditd_decisions_unlogged_total",
            "banditd_decisions_refused_total",
            "banditd_model_version",
            "banditd_neural_linear_refreshes_total",
            "banditd_neural_linear_refresh_seconds",
            "banditd_choose_arm_duration_seconds_count",
            "banditd_report_reward_duration_seconds_count",
        ] {
            assert!(
                metric(&text, name, &m).is_some(),
                "{name}{{model={model}}} missing"
            );
        }
        for outcome in ["defaulted", "dropped"] {
            assert!(
                metric(
                    &text,
                    "banditd_decisions_expired_total",
                    &[("model", model), ("outcome", outcome)]
                )
                .is_some(),
                "decisions_expired_total{{{model},{outcome}}} missing"
            );
        }
        assert!(
            metric(
                &text,
                "banditd_drop_rate",
                &[("model", model), ("layer", "2")]
            )
            .is_some()
        );
    }
    assert!(metric(&text, "banditd_decisions_total", &[("model", "items")]).is_some());
    for arm in ["0", "4"] {
        assert!(
            metric(
                &text,
                "banditd_decisions_total",
                &[("model", "wheel"), ("arm", arm)]
            )
            .is_some()
        );
    }
    assert_eq!(
        metric(
            &text,
            "banditd_request_errors_total",
            &[
                ("transport", "grpc"),
                ("method", "ChooseArm"),
                ("code", "OUT_OF_RANGE")
            ]
        ),
        Some(0.0)
    );
    for name in ["banditd_connections_open", "banditd_connections_max"] {
        assert!(metric(&text, name, &[]).is_some(), "{name} missing");
    }
    assert!(
        metric(
            &text,
            "banditd_accept_errors_total",
            &[("kind", "fd_limit")]
        )
        .is_some()
    );

    let mut client = server.client().await;
    let mut big = decision();
    big.decision_id = "x".repeat(2048);
    let status = client.choose_arm(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    client.choose_arm(decision()).await.expect("decision");
    let text = scrape(server.metrics);
    assert_eq!(
        metric(
            &text,
            "banditd_request_errors_total",
            &[
                ("transport", "grpc"),
                ("method", "ChooseArm"),
                ("code", "OUT_OF_RANGE")
            ]
        ),
        Some(1.0)
    );
    assert!(server.terminate().success());
    let logs = server.logs();
    assert!(logs.contains("serving"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in a log file:\n{logs}"
    );
}

/// `banditd_pending_bytes` follows the pending store: it grows with the decisions held, by
/// at least each one's payload and less than a kilobyte per decision, and falls by at least
/// their ids and scores when their windows close (the table keeps its grown slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_bytes_follow_the_pending_store() {
    let config = r#"
[storage]
durability = "periodic"
[[models]]
name = "wheel"
kind = "fixed_arms"
context_dim = 2
arms = ["0", "1", "2", "3", "4"]
reward_window_seconds = 10
"#;
    let mut server = Server::serving(Start {
        config: Some(config),
        ..Start::default()
    })
    .await;
    let mut client = server.client().await;
    const N: usize = 300;
    for _ in 0..N {
        client.choose_arm(decision()).await.expect("decision");
    }
    // The gauges are set by the expiry sweep (every second for a 10 s window): all N are
    // held at once unless making them took 10 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = pending_bytes_at(&server, N, deadline).await;
    // Payload per decision: a 36-byte id, 5 scores, 2 context values, arm and head.
    let payload = 36.0 + 5.0 * 8.0 + 2.0 * 4.0 + 4.0;
    assert!(
        held >= N as f64 * payload && held < N as f64 * 1024.0,
        "{held} bytes for {N} decisions"
    );
    let emptied = pending_bytes_at(&server, 0, deadline).await;
    let ids_and_scores = N as f64 * (36.0 + 5.0 * 8.0);
    assert!(
        held - emptied >= ids_and_scores,
        "{emptied} bytes left of {held} after every window closed"
    );
    assert!(server.terminate().success());
}

/// `wheel`'s `banditd_pending_bytes` once `banditd_pending_decisions` reads `count`.
async fn pending_bytes_at(server: &Server, count: usize, deadline: Instant) -> f64 {
    let wheel = [("model", "wheel")];
    loop {
        let text = scrape(server.metrics);
        if metric(&text, "banditd_pending_decisions", &wheel) == Some(count as f64) {
            return metric(&text, "banditd_pending_bytes", &wheel).expect("pending bytes");
        }
        assert!(
            Instant::now() < deadline,
            "pending decisions never reached {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The load generator authenticates with `BANDITD_TOKEN` against a server with tokens, and
/// without it stops at its first call with the server's UNAUTHENTICATED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sends_its_token() {
    let server = Server::serving(Start {
        env: vec![("BANDITD_TOKENS", "loadgen-test-token")],
        ..Start::default()
    })
    .await;
    let url = server.url();
    let run = |token: Option<&str>| {
        let mut command = common::loadgen_command(&[
            "grpc", "--target", &url, "--rounds", "50", "--json", "--quiet",
        ]);
        command.env_remove("BANDITD_TOKEN");
        if let Some(token) = token {
            command.env("BANDITD_TOKEN", token);
        }
        command.output().expect("run banditd-loadgen")
    };
    let denied = run(None);
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    let served = run(Some("loadgen-test-token"));
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&served.stdout).expect("JSON report");
    assert_eq!(report["decisions"].as_u64(), Some(50), "{report}");
    assert_eq!(report["errors_total"].as_u64(), Some(0), "{report}");
}
