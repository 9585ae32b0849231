//! Durability end to end: acknowledged rewards survive `kill -9` of the real binary, a graceful
//! restart resumes the model and the pending decisions, and corrupt or torn files in the data
//! directory are skipped (or refused, for a changed network shape) as `storage` documents.
//!
//! The real `banditd` runs on free ports with its data directory and configuration file in a
//! temporary directory; every child process is killed by a drop guard. Seeds are fixed and
//! every wait is bounded.

mod common;

use std::{
    collections::HashMap,
    fs,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use banditd::{
    Config,
    proto::{
        ChooseArmRequest, GetModelRequest, ReportRewardRequest,
        bandit_service_client::BanditServiceClient,
    },
    storage::checkpoint::CheckpointMeta,
};
use common::{TestServer, fixed, reward, scrape, series, test_config};

/// The value of the series `name{labels}` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    series(text, name).unwrap_or(0.0)
}
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::Value;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const BANDITD: &str = env!("CARGO_BIN_EXE_banditd");
/// The model every binary test serves.
const MODEL: &str = "m";

/// A configuration file for the binary: one small fixed-arm model (2-d context, 3 arms,
/// hidden layer `[hidden]`), a one-hour reward window, the given durability.
fn config_toml(
    durability: &str,
    sync_decisions: bool,
    checkpoint_secs: u64,
    hidden: usize,
) -> String {
    format!(
        r#"
[server]
drain_timeout_ms = 2000

[storage]
durability = "{durability}"
sync_decisions = {sync_decisions}
sync_interval_ms = 50
checkpoint_interval_secs = {checkpoint_secs}

[[models]]
name = "{MODEL}"
kind = "fixed_arms"
context_dim = 2
arms = ["a", "b", "c"]
hidden_layers = [{hidden}]
drop_rates = [0.0, 0.1]
reward_window_seconds = 3600
seed = 7
"#
    )
}

/// A port that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
}

/// A temporary directory holding `config.toml`, `data/` and the servers' logs.
struct Site {
    dir: tempfile::TempDir,
    grpc: SocketAddr,
    metrics: SocketAddr,
    runs: usize,
}

impl Site {
    fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("cannot make a temporary directory");
        fs::write(dir.path().join("config.toml"), config).unwrap();
        Self {
            dir,
            grpc: free_addr(),
            metrics: free_addr(),
            runs: 0,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn checkpoints(&self) -> PathBuf {
        self.data().join("checkpoints").join(MODEL)
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Starts `banditd` on this site's ports and data directory and waits (at most 30 s)
    /// until health says SERVING. Logs (JSON, level info) go to `run-<n>.log`.
    async fn start(&mut self) -> Banditd {
        self.runs += 1;
        let log = self.dir.path().join(format!("run-{}.log", self.runs));
        let child = Command::new(BANDITD)
            .arg("--config")
            .arg(self.config())
            .arg("--data-dir")
            .arg(self.data())
            .args(["--grpc-addr", &self.grpc.to_string()])
            .args(["--metrics-addr", &self.metrics.to_string()])
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start banditd");
        let mut server = Banditd { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("banditd exited at startup ({status}):\n{}", server.logs());
            }
            if let Ok(channel) = Channel::from_shared(self.url()).unwrap().connect().await {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if status.is_ok_and(|s| s.into_inner().status() == ServingStatus::Serving) {
                    return server;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("banditd not serving after 30 s:\n{}", server.logs());
    }

    async fn client(&self) -> BanditServiceClient<Channel> {
        BanditServiceClient::connect(self.url()).await.unwrap()
    }

    /// `banditd export` of the stopped server: decision id -> its row.
    fn export(&self) -> HashMap<String, Value> {
        let output = Command::new(BANDITD)
            .arg("--config")
            .arg(self.config())
            .arg("--data-dir")
            .arg(self.data())
            .arg("export")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run banditd export");
        assert!(
            output.status.success(),
            "banditd export failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let row: Value = serde_json::from_str(line).expect("export line is not JSON");
                (row["decision_id"].as_str().unwrap().to_owned(), row)
            })
            .collect()
    }

    /// Checkpoint versions on disk (those with metadata), newest first.
    fn checkpoint_versions(&self) -> Vec<u64> {
        let mut versions: Vec<u64> = fs::read_dir(self.checkpoints())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions
    }

    fn checkpoint_meta(&self, version: u64) -> CheckpointMeta {
        let path = self.checkpoints().join(format!("{version:020}.json"));
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap()
    }
}

/// A running `banditd`, killed (SIGKILL) on drop.
struct Banditd {
    child: Child,
    log: PathBuf,
}

impl Banditd {
    fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and reap it.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits (at most 30 s) for a clean exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "banditd exited with {status}:\n{}",
                    self.logs()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "banditd did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The checkpoint version the "recovered" log line of `MODEL` names (None: no checkpoint).
    fn recovered_checkpoint(&self) -> Option<u64> {
        let logs = self.logs();
        let line = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|l| l["fields"]["message"] == "recovered" && l["fields"]["model"] == MODEL)
            .unwrap_or_else(|| panic!("no \"recovered\" line in:\n{logs}"));
        line["fields"]["checkpoint"].as_u64()
    }
}

impl Drop for Banditd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn choose(context: Vec<f32>) -> ChooseArmRequest {
    fixed(MODEL, context)
}

fn report(id: &str, value: f64) -> ReportRewardRequest {
    reward(MODEL, id, value)
}

async fn model_version(client: &mut BanditServiceClient<Channel>, model: &str) -> u64 {
    client
        .get_model(GetModelRequest {
            model: model.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model_version
}

/// What clients were told before a crash. `clock` orders the events across client tasks:
/// an event's tick is taken after the one it depends on has happened.
#[derive(Debug, Default)]
struct Ledger {
    clock: u64,
    /// Every decision answered: its model version and the tick of the answer.
    answered: HashMap<String, (u64, u64)>,
    /// Rewards acknowledged (OK): value, and the tick at which the reward was sent.
    acked: HashMap<String, (f64, u64)>,
    /// Rewards sent without an answer (the call failed, e.g. because of the kill).
    unanswered: HashMap<String, f64>,
}

impl Ledger {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The decisions the durability promise covers at a crash: all of them with
    /// `sync_decisions`, else those answered before some acknowledged reward was sent.
    fn covered(&self, sync_decisions: bool) -> impl Fn(u64) -> bool + use<> {
        let watermark = if sync_decisions {
            u64::MAX
        } else {
            self.acked
                .values()
                .map(|(_, sent)| *sent)
                .max()
                .unwrap_or(0)
        };
        move |answered_at| answered_at < watermark
    }
}

/// Rewards are quarter steps in [0, 2]: exact in f64 and JSON.
fn reward_value(rng: &mut Xoshiro256PlusPlus) -> f64 {
    f64::from(rng.random_range(0..=8u8)) * 0.25
}

/// One client task: decide, and (4 times in 5) report a reward, until a call fails.
async fn drive(
    mut client: BanditServiceClient<Channel>,
    ledger: Arc<Mutex<Ledger>>,
    seed: u64,
) -> usize {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut rounds = 0;
    loop {
        let context = vec![
            rng.random_range(-1.0..1.0f32),
            rng.random_range(-1.0..1.0f32),
        ];
        let Ok(decision) = client.choose_arm(choose(context)).await else {
            return rounds;
        };
        let decision = decision.into_inner();
        let id = decision.decision_id;
        rounds += 1;
        {
            let mut ledger = ledger.lock().unwrap();
            let at = ledger.tick();
            ledger
                .answered
                .insert(id.clone(), (decision.model_version, at));
        }
        if rng.random_range(0..5) == 0 {
            continue;
        }
        let value = reward_value(&mut rng);
        let sent = {
            let mut ledger = ledger.lock().unwrap();
            ledger.unanswered.insert(id.clone(), value);
            ledger.tick()
        };
        match client.report_reward(report(&id, value)).await {
            Ok(response) => {
                assert!(
                    !response.into_inner().duplicate,
                    "a first reward was called a duplicate"
                );
                let mut ledger = ledger.lock().unwrap();
                ledger.unanswered.remove(&id);
                ledger.acked.insert(id, (value, sent));
            }
            Err(_) => return rounds,
        }
    }
}

/// After a restart: every acknowledged reward is a duplicate; every other answered decision
/// the promise covers still takes a reward (never NOT_FOUND), which is then acknowledged.
/// Decisions it does not cover may be gone (NOT_FOUND): they are forgotten. Runs on 8 tasks.
async fn verify_after_restart(
    site: &Site,
    ledger: &Arc<Mutex<Ledger>>,
    sync_decisions: bool,
    seed: u64,
) -> usize {
    type Work = (String, bool, Option<f64>, Option<f64>);
    let work: Vec<Work> = {
        let ledger = ledger.lock().unwrap();
        let covered = ledger.covered(sync_decisions);
        ledger
            .answered
            .iter()
            .map(|(id, (_, at))| {
                (
                    id.clone(),
                    covered(*at) || ledger.acked.contains_key(id),
                    ledger.acked.get(id).map(|(v, _)| *v),
                    ledger.unanswered.get(id).copied(),
                )
            })
            .collect()
    };
    let mut tasks = Vec::new();
    for (t, chunk) in work.chunks(work.len().div_ceil(8).max(1)).enumerate() {
        let chunk = chunk.to_vec();
        let mut client = site.client().await;
        let ledger = Arc::clone(ledger);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ ((t as u64) << 32));
        tasks.push(tokio::spawn(async move {
            let mut lost = 0;
            for (id, covered, acked, unanswered) in chunk {
                let value = acked
                    .or(unanswered)
                    .unwrap_or_else(|| reward_value(&mut rng));
                let duplicate = match client.report_reward(report(&id, value)).await {
                    Ok(r) => r.into_inner().duplicate,
                    Err(status) if !covered && status.code() == Code::NotFound => {
                        lost += 1;
                        let mut ledger = ledger.lock().unwrap();
                        ledger.answered.remove(&id);
                        ledger.unanswered.remove(&id);
                        continue;
                    }
                    Err(status) => panic!(
                        "decision {id} (acked {acked:?}, sent {unanswered:?}) after restart: {status:?}"
                    ),
                };
                if acked.is_some() {
                    assert!(duplicate, "acknowledged reward of {id} lost by the crash");
                } else if unanswered.is_none() {
                    assert!(!duplicate, "{id} had no reward but is called a duplicate");
                }
                let mut ledger = ledger.lock().unwrap();
                ledger.unanswered.remove(&id);
                let at = ledger.tick();
                ledger.acked.insert(id, (value, at));
            }
            lost
        }));
    }
    let mut lost = 0;
    for task in tasks {
        lost += tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("verification took more than 60 s")
            .unwrap();
    }
    lost
}

/// Three `kill -9` cycles under load from 8 client tasks, each at a seeded moment, then a
/// graceful stop and `banditd export`; see the two tests below.
async fn kill_cycles(sync_decisions: bool, seed: u64) {
    let mut site = Site::new(&config_toml("fsync", sync_decisions, 1, 16));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut server = site.start().await;
    for cycle in 0..3u64 {
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let client = site.client().await;
            tasks.push(tokio::spawn(drive(
                client,
                Arc::clone(&ledger),
                seed ^ (cycle << 16) ^ t,
            )));
        }
        let at = Duration::from_millis(rng.random_range(300..1500));
        tokio::time::sleep(at).await;
        server.kill9();
        let mut rounds = 0;
        for task in tasks {
            rounds += tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("a client task hung after the kill")
                .unwrap();
        }
        assert!(rounds > 0, "no load before the kill");
        let (answered, covered, acked, in_flight, max_version) = {
            let ledger = ledger.lock().unwrap();
            let is_covered = ledger.covered(sync_decisions);
            let covered: Vec<u64> = ledger
                .answered
                .values()
                .filter(|(_, at)| is_covered(*at))
                .map(|(v, _)| *v)
                .collect();
            (
                ledger.answered.len(),
                covered.len(),
                ledger.acked.len(),
                ledger.unanswered.len(),
                covered.into_iter().max().unwrap_or(0),
            )
        };

        server = site.start().await;
        let mut client = site.client().await;
        let status = client
            .get_model(GetModelRequest {
                model: MODEL.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            status.model_version >= max_version,
            "model_version went back from {max_version} to {}",
            status.model_version
        );
        assert!(
            status.pending_decisions >= covered as u64,
            "{} pending after restart, {covered} decisions must have survived",
            status.pending_decisions
        );
        let lost = verify_after_restart(&site, &ledger, sync_decisions, seed ^ cycle).await;
        eprintln!(
            "sync_decisions={sync_decisions} cycle {cycle}: killed after {at:?} and {rounds} rounds; \
             {answered} decisions answered ({covered} covered), {acked} rewards acknowledged, \
             {in_flight} in flight; {lost} uncovered decisions lost"
        );
    }
    server.terminate();
    assert!(
        !site.checkpoint_versions().is_empty(),
        "no checkpoint after a graceful stop"
    );
    let rows = site.export();
    let ledger = ledger.lock().unwrap();
    for (id, (value, _)) in &ledger.acked {
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged decision {id} missing from the export"));
        assert_eq!(row["reward"].as_f64(), Some(*value), "{id}: {row}");
    }
    assert!(ledger.answered.keys().all(|id| rows.contains_key(id)));
}

/// kill -9 at three seeded moments under load (fsync, sync_decisions): no acknowledged reward
/// or answered decision is lost, versions never go backwards, and the export has every reward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_reward() {
    kill_cycles(true, 0xD0_2AB1E).await;
}

/// The same without sync_decisions: acknowledged rewards, and every decision answered
/// before an acknowledged reward was sent, survive kill -9 (later decisions may be lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_decisions_ordered_before_acknowledged_rewards() {
    kill_cycles(false, 0x00DE_72ED).await;
}

/// In process: a graceful stop writes a checkpoint; a restart resumes its version and the
/// pending decisions (unrewarded ones take rewards, rewarded ones are duplicates or conflicts).
#[tokio::test]
async fn graceful_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.storage.data_dir = dir.path().to_owned();
    let server = TestServer::start(config.clone()).await;
    let mut client = server.client().await;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let (mut rewarded, mut open) = (Vec::new(), Vec::new());
    let mut max_served = 0;
    for i in 0..300 {
        let context = vec![
            rng.random_range(-1.0..1.0f32),
            rng.random_range(-1.0..1.0f32),
        ];
        let decision = client
            .choose_arm(fixed("wheel", context))
            .await
            .unwrap()
            .into_inner();
        max_served = max_served.max(decision.model_version);
        if i % 4 == 0 {
            open.push(decision.decision_id);
            continue;
        }
        let value = reward_value(&mut rng);
        let response = client
            .report_reward(reward("wheel", &decision.decision_id, value))
            .await
            .unwrap()
            .into_inner();
        assert!(!response.duplicate);
        rewarded.push((decision.decision_id, value));
    }
    let before = model_version(&mut client, "wheel").await;
    drop(client);
    server.stop().await.unwrap();

    let checkpoints: Vec<PathBuf> = fs::read_dir(dir.path().join("checkpoints/wheel"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(
        !checkpoints.is_empty(),
        "no checkpoint after a graceful stop"
    );

    let server = TestServer::start(config).await;
    let mut client = server.client().await;
    let after = model_version(&mut client, "wheel").await;
    assert!(
        after >= before.max(max_served),
        "version {after} after restart, {before} before (served {max_served})"
    );
    let status = client
        .get_model(GetModelRequest {
            model: "wheel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.pending_decisions, 300);
    for id in &open {
        let response = client
            .report_reward(reward("wheel", id, 0.5))
            .await
            .unwrap()
            .into_inner();
        assert!(!response.duplicate, "{id}");
    }
    for (id, value) in &rewarded {
        let response = client
            .report_reward(reward("wheel", id, *value))
            .await
            .unwrap()
            .into_inner();
        assert!(response.duplicate, "{id}");
        let err = client
            .report_reward(reward("wheel", id, value + 1.0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{id}: {err:?}");
    }
    drop(client);
    server.stop().await.unwrap();
}

/// What a graceful base run left behind, for the corruption tests.
struct Base {
    site: Site,
    /// Rewarded decisions and their rewards.
    rewarded: Vec<(String, f64)>,
    /// Decisions without a reward.
    open: Vec<String>,
    /// Version serving at the end of the last run.
    version: u64,
}

/// Two graceful runs of the binary (periodic durability) with 150 rounds each, so that the
/// data directory has at least two checkpoints and a log with rewarded and open decisions.
async fn base(seed: u64) -> Base {
    let mut site = Site::new(&config_toml("periodic", false, 1, 16));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (mut rewarded, mut open) = (Vec::new(), Vec::new());
    let mut version = 0;
    for _run in 0..2 {
        let mut server = site.start().await;
        let mut client = site.client().await;
        for i in 0..150 {
            let context = vec![
                rng.random_range(-1.0..1.0f32),
                rng.random_range(-1.0..1.0f32),
            ];
            let decision = client
                .choose_arm(choose(context))
                .await
                .unwrap()
                .into_inner();
            if i % 5 == 0 {
                open.push(decision.decision_id);
                continue;
            }
            let value = reward_value(&mut rng);
            client
                .report_reward(report(&decision.decision_id, value))
                .await
                .unwrap();
            rewarded.push((decision.decision_id, value));
        }
        version = model_version(&mut client, MODEL).await;
        drop(client);
        server.terminate();
    }
    let versions = site.checkpoint_versions();
    assert!(
        versions.len() >= 2,
        "expected two checkpoints, found {versions:?}"
    );
    Base {
        site,
        rewarded,
        open,
        version,
    }
}

impl Base {
    /// Starts the binary on the (damaged) directory and checks that it serves: decisions and
    /// rewards work, and — when the log was kept — the old decisions are still known.
    /// Returns the server and its `/metrics`.
    async fn restart_and_serve(&mut self, log_kept: bool) -> (Banditd, String) {
        let server = self.site.start().await;
        let mut client = self.site.client().await;
        for i in 0..20 {
            let decision = client
                .choose_arm(choose(vec![0.1 * i as f32, -0.5]))
                .await
                .unwrap()
                .into_inner();
            let response = client
                .report_reward(report(&decision.decision_id, 1.0))
                .await
                .unwrap()
                .into_inner();
            assert!(!response.duplicate);
        }
        if log_kept {
            let after = model_version(&mut client, MODEL).await;
            assert!(after >= self.version, "version {after} < {}", self.version);
            for (id, value) in &self.rewarded {
                let response = client.report_reward(report(id, *value)).await.unwrap();
                assert!(response.into_inner().duplicate, "{id}");
            }
            for id in &self.open {
                let response = client.report_reward(report(id, 0.25)).await.unwrap();
                assert!(!response.into_inner().duplicate, "{id}");
            }
        }
        let metrics = scrape(self.site.metrics);
        (server, metrics)
    }
}

/// A corrupt newest checkpoint (bytes flipped in its weights) is skipped and counted; the
/// one before it is used, and the log is replayed on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_checkpoint_is_skipped() {
    let mut base = base(21).await;
    let versions = base.site.checkpoint_versions();
    let path = base
        .site
        .checkpoints()
        .join(format!("{:020}.safetensors", versions[0]));
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 64..n - 32] {
        *b ^= 0x5a;
    }
    fs::write(&path, bytes).unwrap();
    let (mut server, metrics) = base.restart_and_serve(true).await;
    assert_eq!(server.recovered_checkpoint(), Some(versions[1]));
    assert!(
        metric(
            &metrics,
            "banditd_recovery_skipped_total{kind=\"checkpoint\"}"
        ) >= 1.0,
        "{metrics}"
    );
    server.terminate();
}

/// A checkpoint whose metadata is missing (a torn write) is skipped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_without_metadata_is_skipped() {
    let mut base = base(22).await;
    let versions = base.site.checkpoint_versions();
    fs::remove_file(
        base.site
            .checkpoints()
            .join(format!("{:020}.json", versions[0])),
    )
    .unwrap();
    let (mut server, metrics) = base.restart_and_serve(true).await;
    assert_eq!(server.recovered_checkpoint(), Some(versions[1]));
    assert!(
        metric(
            &metrics,
            "banditd_recovery_skipped_total{kind=\"checkpoint\"}"
        ) >= 1.0,
        "{metrics}"
    );
    server.terminate();
}

/// Truncates the newest log segment with `cut(len) -> new len`, restarts, and checks the
/// service comes up and works (the torn record a crash would leave is cut off, not taken for
/// corruption), and that the examples logged afterwards are numbered past what the newest
/// checkpoint covers (else the next restart would take them for already trained).
async fn truncated_log(seed: u64, cut: fn(u64) -> u64) {
    let mut base = base(seed).await;
    let mut segments: Vec<PathBuf> = fs::read_dir(base.site.data().join("log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let log = segments.last().expect("no log segment").clone();
    let len = fs::metadata(&log).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(cut(len))
        .unwrap();
    let newest = base.site.checkpoint_versions()[0];
    let covered = base.site.checkpoint_meta(newest).last_seq;
    let (mut server, metrics) = base.restart_and_serve(false).await;
    eprintln!(
        "{} {len} -> {} bytes; recovery skipped: {}",
        log.display(),
        cut(len),
        metric(
            &metrics,
            "banditd_recovery_skipped_total{kind=\"log_segment\"}"
        )
    );
    server.terminate();
    // The 20 examples of the restarted run come after the checkpoint.
    let examples = banditd::storage::examples(&base.site.data(), MODEL).unwrap();
    assert!(examples.len() >= 20);
    let new = &examples[examples.len() - 20..];
    assert!(
        new.iter().all(|e| e.seq > covered),
        "examples logged after the restart reuse sequence numbers the checkpoint covers \
         (last_seq {covered}): {:?}",
        new.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
}

/// The newest log segment cut to half its size: the service starts and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_truncated_to_half_still_starts() {
    truncated_log(23, |len| len / 2).await;
}

/// The newest log segment missing its last 4 KiB: the service starts and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_missing_its_tail_still_starts() {
    truncated_log(24, |len| len.saturating_sub(4096)).await;
}

/// A changed hidden layer width on a directory with checkpoints: startup is refused with an
/// error naming the model and both shapes. (The model registry in the data directory wins
/// over the file after the first start; deleting it, as an operator resets to the file, lets
/// the file's new width meet the old checkpoints.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_network_shape_is_refused() {
    let base = base(25).await;
    let toml = config_toml("periodic", false, 1, 24);
    let mut config = Config::from_toml(&toml).unwrap();
    config.storage.data_dir = base.site.data();
    fs::remove_file(base.site.data().join(banditd::registry::FILE_NAME)).unwrap();
    config.server.drain_timeout_ms = 1_000;
    let server = TestServer::spawn(config).await;
    let err = tokio::time::timeout(Duration::from_secs(30), server.join())
        .await
        .expect("startup neither failed nor finished in 30 s")
        .expect_err("a checkpoint of another shape was accepted")
        .to_string();
    assert!(
        err.contains(&format!("{MODEL:?}"))
            && err.contains("[2, 16, 3]")
            && err.contains("[2, 24, 3]"),
        "{err}"
    );
}

/// A checkpoint written before any reward covers no example: a reward acknowledged after it
/// and then lost with `kill -9` before the next checkpoint is still trained after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reward_after_an_empty_checkpoint_survives_kill() {
    // Checkpoints only at shutdown, in this test's time frame.
    let mut site = Site::new(&config_toml("fsync", false, 3600, 16));
    let mut server = site.start().await;
    let mut client = site.client().await;
    let decision = client
        .choose_arm(choose(vec![0.5, 0.5]))
        .await
        .unwrap()
        .into_inner();
    drop(client);
    server.terminate();
    let empty = site.checkpoint_versions();
    assert_eq!(empty.len(), 1, "one checkpoint, before any reward");

    let mut server = site.start().await;
    let mut client = site.client().await;
    assert!(
        model_version(&mut client, MODEL).await >= empty[0],
        "the version went backwards"
    );
    client
        .report_reward(report(&decision.decision_id, 1.0))
        .await
        .unwrap();
    server.kill9();
    assert_eq!(
        site.checkpoint_versions(),
        empty,
        "no newer checkpoint was expected"
    );

    let mut server = site.start().await;
    let mut client = site.client().await;
    let response = client
        .report_reward(report(&decision.decision_id, 1.0))
        .await
        .unwrap();
    assert!(response.into_inner().duplicate);
    let version = model_version(&mut client, MODEL).await;
    assert!(version > empty[0], "the version went backwards ({version})");
    let info = client
        .get_model(banditd::proto::GetModelRequest {
            model: MODEL.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.training_steps > 0,
        "the logged reward was not trained on after the restart"
    );
    drop(client);
    server.terminate();
}
