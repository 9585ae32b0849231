//! Soak: a load run where rewards never arrive and some clients never read their responses,
//! against the real `banditd` binary. The server's resident memory (VmRSS, sampled every
//! 200 ms) stays within a bound derived from its configured limits for the whole run, health
//! checks answer throughout, and a well-formed ChooseArm is still answered at the end.
//!
//! The load:
//! - `banditd-loadgen` deciding as fast as it can with `--missing-rewards 1`: no reward ever
//!   arrives, so every decision stays pending until the store evicts it;
//! - "deaf" clients: raw HTTP/2 connections that advertise a flow-control window of 0 (the
//!   server may send them no response body at all), open as many ChooseArm streams as the
//!   server lets them, and never read a byte from the socket. Every response the server makes
//!   for them is stuck in its buffers until it gives up on the connection.
//!
//! `soak` runs in `cargo test` (about 25 s, small limits); `soak_long` is the manual run with
//! the default limits (`cargo test --release --test soak soak_long -- --ignored --nocapture`,
//! `BANDITD_SOAK_SECS` sets its length, 300 s by default).

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use banditd::proto::{ChooseArmRequest, bandit_service_client::BanditServiceClient};
use common::{Banditd, loadgen_command, scrape, series, start_banditd_logging};
use prost::Message;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const MIB: u64 = 1024 * 1024;
const KIB: u64 = 1024;

/// The limits the server runs with, and the test's load.
#[derive(Debug, Clone)]
struct Soak {
    duration: Duration,
    /// `None`: the default limits (the long manual run).
    limits: Option<Limits>,
    /// A new deaf connection this often, kept open until the end.
    deaf_every: Duration,
    /// Most deaf connections opened.
    deaf_max: usize,
    loadgen_workers: u32,
    /// Health checks slower than this fail the run.
    health_deadline: Duration,
}

/// The configured limits that bound memory (see [`Limits::budget`]).
#[derive(Debug, Clone)]
struct Limits {
    pending_capacity: u64,
    writer_queue_capacity: u64,
    max_in_flight: u64,
    max_in_flight_per_connection: u64,
    keepalive_interval_secs: u64,
    keepalive_timeout_secs: u64,
}

impl Limits {
    /// The embedded defaults (README.md "Limits and security").
    fn defaults() -> Self {
        Self {
            pending_capacity: 250_000,
            writer_queue_capacity: 65_536,
            max_in_flight: 4096,
            max_in_flight_per_connection: 1024,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
        }
    }

    fn toml(&self) -> String {
        format!(
            r#"
[server]
drain_timeout_ms = 1000
max_in_flight = {max_in_flight}
max_in_flight_per_connection = {max_in_flight_per_connection}
keepalive_interval_secs = {keepalive_interval_secs}
keepalive_timeout_secs = {keepalive_timeout_secs}

[storage]
durability = "periodic"
writer_queue_capacity = {writer_queue_capacity}

[[models]]
name = "wheel"
kind = "fixed_arms"
context_dim = 2
arms = ["0", "1", "2", "3", "4"]
pending_capacity = {pending_capacity}
"#,
            max_in_flight = self.max_in_flight,
            max_in_flight_per_connection = self.max_in_flight_per_connection,
            keepalive_interval_secs = self.keepalive_interval_secs,
            keepalive_timeout_secs = self.keepalive_timeout_secs,
            writer_queue_capacity = self.writer_queue_capacity,
            pending_capacity = self.pending_capacity,
        )
    }

    /// How much the server may grow above its idle RSS under this load, term by term. Each
    /// per-item cost is a generous upper estimate (about 4x what the item holds), so that
    /// the bound cannot flake, yet an unbounded store or a per-call leak blows through it
    /// within seconds at the rates this test drives.
    fn budget(&self, deaf_connections: u64, other_connections: u64) -> Vec<(&'static str, u64)> {
        vec![
            // A pending decision of the wheel model (id, arm, 5 scores, input, map and queue
            // entries) is under 1 KiB.
            ("pending decisions", self.pending_capacity * 4 * KIB),
            // A queued log operation is a boxed decision record: under 1 KiB.
            ("log writer queue", self.writer_queue_capacity * 4 * KIB),
            // The writer encodes a group of at most 4096 records into one buffer it keeps.
            // (The segment files' pages are the kernel's page cache, not the process's RSS.)
            ("log writer group buffer", 4096 * 4 * KIB),
            // A call in a handler: its request, response and task, a few KiB.
            ("calls in flight", self.max_in_flight * 16 * KIB),
            // A connection nobody reads: at most `max_in_flight_per_connection` streams are
            // open on it (HTTP/2 MAX_CONCURRENT_STREAMS), each holding its unsent response and
            // stream state (a few KiB); plus the connection's read and write buffers.
            (
                "deaf connections",
                deaf_connections * (self.max_in_flight_per_connection * 16 * KIB + 1024 * KIB),
            ),
            // The load generator's and the test's own connections.
            ("other connections", other_connections * 1024 * KIB),
            // What no limit above covers: freed memory mimalloc keeps for reuse, thread stacks
            // touched, the learner's and the writer's working sets. In
            // `soak` on the reference machine everything together stayed 50-60 MiB above the
            // baseline; without the HTTP/2 stream limit the deaf clients alone took it past
            // 400 MiB within the same 24 s.
            ("unbudgeted working memory", 64 * MIB),
        ]
    }
}

/// VmRSS of `pid` in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// Samples VmRSS every 200 ms until `stop` is set.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> JoinHandle<Vec<(Duration, u64)>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(bytes) = rss(pid) {
                samples.push((start.elapsed(), bytes));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        samples
    })
}

/// An HTTP/2 connection that sends ChooseArm calls and never reads: raw frames on a TCP
/// socket, so nothing on this side drains what the server sends.
struct Deaf {
    socket: TcpStream,
    next_stream: u32,
    /// Request body bytes sent: the server's initial connection window (65,535 bytes) is all
    /// this client may send without reading the server's WINDOW_UPDATEs.
    data_sent: usize,
}

/// HTTP/2 frame types and flags used here (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The initial flow-control window every HTTP/2 peer starts with.
const INITIAL_WINDOW: usize = 65_535;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .expect("small frame")
        .to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal, not Huffman-coded (all ours are under 127 bytes).
fn hpack_str(out: &mut Vec<u8>, s: &str) {
    out.push(u8::try_from(s.len()).expect("short header"));
    out.extend_from_slice(s.as_bytes());
}

impl Deaf {
    /// Connects and sends the preface and SETTINGS_INITIAL_WINDOW_SIZE = 0: the server may
    /// send headers and trailers but no response body.
    fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let mut socket = TcpStream::connect(addr)?;
        socket.set_nodelay(true)?;
        // A write that cannot finish means the server has stopped reading this connection.
        socket.set_write_timeout(Some(Duration::from_millis(200)))?;
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
        hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
        socket.write_all(&hello)?;
        Ok(Self {
            socket,
            next_stream: 1,
            data_sent: 0,
        })
    }

    /// Sends one ChooseArm call; false once the connection window would be exceeded or the
    /// server stops taking bytes (the connection is then left alone: a write may have been
    /// cut mid-frame).
    fn call(&mut self, authority: &str, body: &[u8]) -> bool {
        let mut grpc = vec![0u8];
        grpc.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        grpc.extend_from_slice(body);
        if self.data_sent + grpc.len() > INITIAL_WINDOW {
            return false;
        }
        // :method POST (static 3), :scheme http (static 6), then literals without indexing:
        // :path (static 4), :authority (static 1), content-type (static 31), te.
        let mut block = vec![0x83, 0x86, 0x04];
        hpack_str(&mut block, "/banditd.v1.BanditService/ChooseArm");
        block.push(0x01);
        hpack_str(&mut block, authority);
        block.extend([0x0f, 0x10]);
        hpack_str(&mut block, "application/grpc");
        block.push(0x00);
        hpack_str(&mut block, "te");
        hpack_str(&mut block, "trailers");
        let mut bytes = frame(HEADERS, END_HEADERS, self.next_stream, &block);
        bytes.extend(frame(DATA, END_STREAM, self.next_stream, &grpc));
        if self.socket.write_all(&bytes).is_err() {
            return false;
        }
        self.next_stream += 2;
        self.data_sent += grpc.len();
        true
    }
}

/// Opens a deaf connection every `every` (at most `max`), each sending calls until the
/// server or its window stops it; keeps them all open until `stop`. Returns the calls sent
/// and the connections opened.
fn run_deaf(
    addr: SocketAddr,
    every: Duration,
    max: usize,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
) -> JoinHandle<usize> {
    std::thread::spawn(move || {
        let body = ChooseArmRequest {
            model: "wheel".into(),
            context: vec![0.25, -0.5],
            ..Default::default()
        }
        .encode_to_vec();
        let authority = addr.to_string();
        let mut open = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if open.len() < max
                && let Ok(mut deaf) = Deaf::connect(addr)
            {
                while deaf.call(&authority, &body) {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                open.push(deaf);
            }
            std::thread::sleep(every);
        }
        open.len()
    })
}

/// What one health check saw.
#[derive(Debug)]
struct Health {
    latencies: Vec<Duration>,
    failures: Vec<String>,
}

/// Checks grpc.health.v1 every 200 ms on its own connection until `stop`.
async fn check_health(addr: SocketAddr, deadline: Duration, stop: Arc<AtomicBool>) -> Health {
    let mut out = Health {
        latencies: Vec::new(),
        failures: Vec::new(),
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_timeout(deadline)
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        match tokio::time::timeout(deadline, check).await {
            Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving => {
                out.latencies.push(started.elapsed());
            }
            Ok(Ok(r)) => out
                .failures
                .push(format!("status {:?}", r.get_ref().status())),
            Ok(Err(status)) => out.failures.push(format!("{status:?}")),
            Err(_) => out.failures.push(format!("no answer within {deadline:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

async fn run(soak: Soak) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec![
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
    ];
    let limits = match &soak.limits {
        Some(limits) => {
            let path = dir.path().join("soak.toml");
            std::fs::write(&path, limits.toml()).expect("write config");
            args.extend(["--config".to_owned(), path.display().to_string()]);
            limits.clone()
        }
        None => Limits::defaults(),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Errors only: every eviction is a warning, thousands a second here.
    let server: Banditd = start_banditd_logging(&args, "error");
    let pid = server.child.id();
    let url = format!("http://{}", server.grpc);

    // Ready, and a few decisions so that the first-call allocations are in the baseline.
    let mut client = BanditServiceClient::connect(url.clone())
        .await
        .expect("connect");
    let request = || ChooseArmRequest {
        model: "wheel".into(),
        context: vec![0.1, 0.2],
        ..Default::default()
    };
    let ready = Instant::now();
    while client.choose_arm(request()).await.is_err() {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "not serving after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..100 {
        client
            .choose_arm(request())
            .await
            .expect("warm-up decision");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss(pid).expect("server RSS");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_rss(pid, Arc::clone(&stop));
    let health = tokio::spawn(check_health(
        server.grpc,
        soak.health_deadline,
        Arc::clone(&stop),
    ));
    let deaf_calls = Arc::new(AtomicU64::new(0));
    let deaf = run_deaf(
        server.grpc,
        soak.deaf_every,
        soak.deaf_max,
        Arc::clone(&stop),
        Arc::clone(&deaf_calls),
    );
    let secs = format!("{}s", soak.duration.as_secs());
    let workers = soak.loadgen_workers.to_string();
    let mut load = loadgen_command(&[
        "grpc",
        "--target",
        &url,
        "--model",
        "wheel",
        "--env",
        "wheel:0.5",
        "--seed",
        "7",
        "--duration",
        &secs,
        "--workers",
        &workers,
        "--connections",
        "2",
        "--missing-rewards",
        "1",
        "--request-timeout",
        "30s",
        "--json",
        "--quiet",
    ]);
    let load = tokio::task::spawn_blocking(move || load.output())
        .await
        .expect("join");
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let deaf_connections = deaf.join().expect("deaf clients") as u64;
    let health = health.await.expect("health task");

    // The service still decides.
    let decided = client.choose_arm(request()).await;
    let metrics = scrape(server.metrics);

    let load = load.expect("run banditd-loadgen");
    assert!(
        load.status.success(),
        "banditd-loadgen failed: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&load.stdout).expect("JSON report");
    let decisions = report["decisions"].as_u64().expect("decisions");

    let max = samples.iter().map(|s| s.1).max().expect("samples");
    let end = samples.last().expect("samples").1;
    let budget = limits.budget(deaf_connections, 4);
    let allowed: u64 = budget.iter().map(|(_, b)| b).sum();
    let mut latencies = health.latencies.clone();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let evicted =
        series(&metrics, "banditd_decisions_evicted_total{model=\"wheel\"}").unwrap_or(0.0);
    let pending =
        series(&metrics, "banditd_pending_decisions{model=\"wheel\"}").unwrap_or(f64::NAN);
    let trajectory: Vec<String> = samples
        .iter()
        .step_by((samples.len() / 20).max(1))
        .map(|(t, b)| format!("{:.0}s {:.1}", t.as_secs_f64(), mib(*b)))
        .collect();
    eprintln!(
        "soak {:?}: RSS baseline {:.1} MiB, max {:.1} MiB, end {:.1} MiB; bound {:.1} MiB \
         (baseline + {:.1} MiB: {}); trajectory (MiB): {}; loadgen {decisions} decisions \
         ({} errors: {}); deaf: {deaf_connections} connections, {} calls; pending {pending}, \
         evicted {evicted}; health: {} checks, p50 {:?}, p99 {:?}, max {:?}, {} failures",
        soak.duration,
        mib(baseline),
        mib(max),
        mib(end),
        mib(baseline + allowed),
        mib(allowed),
        budget
            .iter()
            .map(|(k, b)| format!("{k} {:.1}", mib(*b)))
            .collect::<Vec<_>>()
            .join(", "),
        trajectory.join(", "),
        report["errors_total"],
        report["errors"],
        deaf_calls.load(Ordering::Relaxed),
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().expect("checks"),
        health.failures.len(),
    );

    assert!(
        health.failures.is_empty(),
        "health checks failed: {:?}",
        health.failures
    );
    // One check every 200 ms plus its latency: most of the run's windows were covered.
    let expected = soak.duration.as_millis() / 200 / 2;
    assert!(
        latencies.len() as u128 >= expected,
        "{} health checks in {:?}",
        latencies.len(),
        soak.duration
    );
    decided.expect("a well-formed ChooseArm after the soak");
    // The load did what the bound is about: the pending store was overrun several times
    // over (by the load generator's and the deaf clients' decisions), and the deaf clients
    // got calls through.
    assert!(decisions > 0, "the load generator made no decision");
    assert!(
        evicted >= 2.0 * limits.pending_capacity as f64 || soak.limits.is_none(),
        "only {evicted} decisions evicted with pending_capacity {}",
        limits.pending_capacity
    );
    assert!(
        pending <= limits.pending_capacity as f64,
        "{pending} pending"
    );
    assert!(
        deaf_calls.load(Ordering::Relaxed) > 0,
        "no deaf call went through"
    );
    assert!(
        max <= baseline + allowed,
        "RSS reached {:.1} MiB, above the bound of {:.1} MiB",
        mib(max),
        mib(baseline + allowed)
    );
}

/// About 25 s of load with small limits: RSS within the bound the limits imply, health
/// answering throughout, decisions answered at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    run(Soak {
        duration: Duration::from_secs(24),
        limits: Some(Limits {
            pending_capacity: 2000,
            writer_queue_capacity: 1024,
            max_in_flight: 128,
            max_in_flight_per_connection: 32,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
        }),
        deaf_every: Duration::from_millis(1000),
        deaf_max: 16,
        loadgen_workers: 16,
        health_deadline: Duration::from_secs(5),
    })
    .await;
}

/// The manual long run with the default limits: `BANDITD_SOAK_SECS` seconds (300 if unset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "manual: minutes long; run with --release --ignored"]
async fn soak_long() {
    let secs = std::env::var("BANDITD_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    run(Soak {
        duration: Duration::from_secs(secs),
        limits: None,
        deaf_every: Duration::from_secs(5),
        deaf_max: 32,
        loadgen_workers: 32,
        health_deadline: Duration::from_secs(5),
    })
    .await;
}
