//! `grpc`: drives a server with the rounds of a simulated environment.
//!
//! The rounds come from one seeded environment behind a mutex (with the seeded draws of
//! which rewards go missing and how long each is delayed), so the sequence of rounds is the
//! same whatever the concurrency; which worker plays which round is not. Closed loop: N
//! workers each take the next round, decide, report (inline, or in a spawned task after a
//! delay) and repeat. Open loop: a scheduler starts round k at `start + k / rate`, with at
//! most N decisions in flight; latency then counts from when the round was due (waiting for
//! a free slot included), so a server that falls behind shows it in the percentiles instead
//! of slowing the schedule down.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    backoff::{Backoff, retryable},
    cli::{GrpcArgs, RewardDelay, Transport},
    connect::{Client, Connector},
    plot,
    report::{GrpcReport, Latencies, LatencySummary, ServerModel},
    server_cpu::CpuProbe,
};
use anyhow::{Context, bail};
use banditd::{
    config::{ModelConfig, ModelKind},
    harness::{CurvePoint, NoopService, Tally, curve_every, model_for_env},
    proto::{self, Arm, ChooseArmRequest, GetModelRequest, ModelInfo, ReportRewardRequest},
    sim::{self, Environment, Round},
};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::{sync::Semaphore, task::JoinSet};

/// Attempts at one reward report while the server answers "not now" (a decision stays open
/// until its reward arrives, so a report is worth retrying; a decision is not).
const REPORT_ATTEMPTS: u32 = 5;

/// Rounds played when neither `--rounds` nor `--duration` is given.
const DEFAULT_ROUNDS: u64 = 5000;
/// Curve points kept in a report at most.
const MAX_CURVE_POINTS: usize = 400;

/// Runs the `grpc` subcommand on its own multi-threaded runtime.
pub(crate) fn main(args: GrpcArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loadgen")
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args))
}

/// How requests for the model are built.
#[derive(Debug, Clone)]
struct Plan {
    model: String,
    /// False when a fixed-arm model's arms are exactly the environment's, in order: the
    /// request then names no candidates (all arms), the service's usual path.
    send_candidates: bool,
}

impl Plan {
    /// Checks that the server's model fits the environment.
    fn new(env: &dyn Environment, info: &ModelInfo) -> anyhow::Result<Self> {
        let kind = match proto::ModelKind::try_from(info.kind) {
            Ok(proto::ModelKind::FixedArms) => ModelKind::FixedArms,
            Ok(proto::ModelKind::PerArmFeatures) => ModelKind::PerArmFeatures,
            _ => bail!(
                "the server reports model {:?} with an unknown kind ({})",
                info.name,
                info.kind
            ),
        };
        let mut config = ModelConfig::new(&info.name, kind, info.context_dim as usize);
        config.arms = info.arm_ids.clone();
        config.arm_feature_dim = info.arm_feature_dim as usize;
        model_for_env(env, Some(&config))?;
        let send_candidates = !(kind == ModelKind::FixedArms && env.arm_ids() == info.arm_ids);
        Ok(Self {
            model: info.name.clone(),
            send_candidates,
        })
    }

    fn request(&self, round: &Round) -> ChooseArmRequest {
        let candidates = if self.send_candidates {
            round
                .candidates
                .iter()
                .map(|c| Arm {
                    id: c.id.clone(),
                    features: c.features.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        ChooseArmRequest {
            model: self.model.clone(),
            context: round.context.clone(),
            candidates,
            ..Default::default()
        }
    }
}

/// One round to play, with its seeded reward fate.
#[derive(Debug)]
struct Job {
    round: Round,
    missing: bool,
    delay: Duration,
}

/// The one place rounds come from.
struct Source {
    env: Box<dyn Environment>,
    rng: Xoshiro256PlusPlus,
    missing: f64,
    delay: RewardDelay,
    limit: Option<u64>,
    deadline: Option<Instant>,
    taken: u64,
}

impl Source {
    fn next(&mut self) -> Option<Job> {
        if self.limit.is_some_and(|limit| self.taken >= limit)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return None;
        }
        self.taken += 1;
        let round = self.env.next_round();
        let missing = self.missing > 0.0 && self.rng.random_bool(self.missing);
        let delay = match self.delay {
            RewardDelay::None => Duration::ZERO,
            RewardDelay::Fixed(d) => d,
            RewardDelay::Exp(mean) => {
                let u: f64 = self.rng.random();
                Duration::from_secs_f64(-mean.as_secs_f64() * (1.0 - u).ln())
            }
        };
        Some(Job {
            round,
            missing,
            delay,
        })
    }
}

/// What the run measures.
struct Stats {
    tally: Tally,
    curve: Vec<CurvePoint>,
    curve_every: u64,
    choose: Histogram<u64>,
    report: Histogram<u64>,
    errors: BTreeMap<String, BTreeMap<String, u64>>,
    rewards_sent: u64,
    rewards_accepted: u64,
    rewards_missing: u64,
    regret_reported: f64,
    last_decision: Option<Instant>,
}

impl Stats {
    fn new(curve_every: u64) -> anyhow::Result<Self> {
        let histogram = || {
            Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
                .context("cannot create a latency histogram")
        };
        Ok(Self {
            tally: Tally::default(),
            curve: Vec::new(),
            curve_every,
            choose: histogram()?,
            report: histogram()?,
            errors: BTreeMap::new(),
            rewards_sent: 0,
            rewards_accepted: 0,
            rewards_missing: 0,
            regret_reported: 0.0,
            last_decision: None,
        })
    }

    fn error(&mut self, method: &str, code: &str) {
        *self
            .errors
            .entry(method.to_owned())
            .or_default()
            .entry(code.to_owned())
            .or_default() += 1;
    }
}

/// State shared by the workers.
struct Shared {
    plan: Plan,
    source: Mutex<Source>,
    stats: Mutex<Stats>,
    /// Rounds taken so far (for the progress bar).
    started: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Shared {
    fn next_job(&self) -> Option<Job> {
        let job = lock(&self.source).next();
        if job.is_some() {
            self.started.fetch_add(1, Ordering::Relaxed);
        }
        job
    }

    /// Sends the decision of `job` (latency counted from `t0`); returns the reward report
    /// to send and its delay, unless the decision failed or its reward goes missing.
    async fn choose(
        &self,
        client: &mut Client,
        backoff: &mut Backoff,
        job: Job,
        t0: Instant,
    ) -> Option<(ReportRewardRequest, Duration)> {
        let result = client.choose_arm(self.plan.request(&job.round)).await;
        backoff.record(result.as_ref().err());
        let elapsed = micros(t0);
        let mut stats = lock(&self.stats);
        stats.choose.saturating_record(elapsed);
        let response = match result {
            Ok(response) => response.into_inner(),
            Err(status) => {
                stats.error("ChooseArm", banditd::grpc::code_name(status.code()));
                return None;
            }
        };
        let Some(index) = job
            .round
            .candidates
            .iter()
            .position(|c| c.id == response.arm_id)
        else {
            // Not a gRPC code: the server answered with an arm that was not offered.
            stats.error("ChooseArm", "UNKNOWN_ARM_IN_RESPONSE");
            return None;
        };
        let regret = stats.tally.record(&job.round, index);
        if stats.tally.decisions.is_multiple_of(stats.curve_every) {
            let point = stats.tally.point();
            stats.curve.push(point);
        }
        stats.last_decision = Some(Instant::now());
        if job.missing {
            stats.rewards_missing += 1;
            return None;
        }
        stats.rewards_sent += 1;
        let report = ReportRewardRequest {
            model: self.plan.model.clone(),
            decision_id: response.decision_id,
            reward: job.round.rewards[index],
            regret: Some(regret),
        };
        Some((report, job.delay))
    }

    /// Sends one reward report; retries (at most [`REPORT_ATTEMPTS`] in all, backing off)
    /// while the server answers "not now". Every failed attempt counts as an error.
    async fn report(
        &self,
        client: &mut Client,
        backoff: &mut Backoff,
        request: ReportRewardRequest,
    ) {
        let regret = request.regret.unwrap_or(0.0);
        for attempt in 1..=REPORT_ATTEMPTS {
            backoff.wait().await;
            let t0 = Instant::now();
            let result = client.report_reward(request.clone()).await;
            backoff.record(result.as_ref().err());
            let elapsed = micros(t0);
            let mut stats = lock(&self.stats);
            stats.report.saturating_record(elapsed);
            match result {
                Ok(_) => {
                    stats.rewards_accepted += 1;
                    stats.regret_reported += regret;
                    return;
                }
                Err(status) => {
                    stats.error("ReportReward", banditd::grpc::code_name(status.code()));
                    if !retryable(status.code()) || attempt == REPORT_ATTEMPTS {
                        return;
                    }
                }
            }
        }
    }
}

/// How long `get_model` waits for a server that answers UNAVAILABLE (still recovering at
/// startup) before giving up.
const READY_WAIT: Duration = Duration::from_secs(60);

/// The model's description; waits (up to [`READY_WAIT`]) while the server is UNAVAILABLE,
/// i.e. still recovering its models at startup.
async fn get_model(client: &Client, url: &str, model: &str) -> anyhow::Result<ModelInfo> {
    let mut client = client.clone();
    let mut backoff = Backoff::default();
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let result = client
            .get_model(GetModelRequest {
                model: model.to_owned(),
            })
            .await;
        match result {
            Ok(info) => return Ok(info.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
            {
                backoff.record(Some(&status));
                backoff.wait().await;
            }
            Err(status) => bail!(
                "{url}: GetModel({model:?}) failed: {}: {}",
                banditd::grpc::code_name(status.code()),
                status.message()
            ),
        }
    }
}

/// A no-op server inside this process, on a free port and its own runtime and threads.
struct BuiltinNoop {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BuiltinNoop {
    fn start(models: Vec<ModelInfo>) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .context("cannot bind the built-in no-op server")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("noop-server")
            .build()
            .context("cannot start the no-op server's runtime")?;
        let thread = std::thread::Builder::new()
            .name("noop-server".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    tonic::transport::Server::builder()
                        .add_service(NoopService::from_models(models).into_server())
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(listener)
                                .with_nodelay(Some(true)),
                            async {
                                let _ = rx.await;
                            },
                        )
                        .await
                        .map_err(std::io::Error::other)
                });
                if let Err(e) = served {
                    eprintln!("built-in no-op server failed: {e}");
                }
            })
            .context("cannot start the no-op server's thread")?;
        Ok(Self {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for BuiltinNoop {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(args: GrpcArgs) -> anyhow::Result<()> {
    let rounds = match (args.rounds, args.duration) {
        (None, None) => Some(DEFAULT_ROUNDS),
        (rounds, _) => rounds,
    };
    if let Some(path) = &args.output.plot {
        plot::check_path(path)?;
    }
    let env = sim::from_spec(&args.env, args.seed)?;
    if args.baseline_metrics.is_some() && args.baseline.as_deref() == Some("builtin") {
        bail!(
            "--baseline-metrics needs a separate no-op server (--baseline URL): the builtin one \
             shares this process's CPU"
        );
    }
    if args.transport == Transport::Http && args.baseline.is_some() {
        bail!("--baseline compares against a gRPC no-op server: not with --transport http");
    }
    let target = connect_targets(&args).await?;
    let info = get_model(&target[0], &args.target, &args.model).await?;
    let plan = Plan::new(&*env, &info)
        .with_context(|| format!("{}: model {:?}", args.target, args.model))?;
    drop(env);

    let baseline = match args.baseline.as_deref() {
        None => None,
        Some(spec) => {
            let builtin = if spec == "builtin" {
                Some(BuiltinNoop::start(vec![info.clone()])?)
            } else {
                None
            };
            let url = match &builtin {
                Some(b) => format!("http://{}", b.addr),
                None => spec.to_owned(),
            };
            let channels =
                Connector::new(&url, args.transport, &args.connect, args.request_timeout)?
                    .connect(args.connections)
                    .await
                    .context("the --baseline server")?;
            let base_info = get_model(&channels[0], &url, &args.model).await?;
            Plan::new(&*sim::from_spec(&args.env, args.seed)?, &base_info)
                .with_context(|| format!("--baseline {url}: model {:?}", args.model))?;
            let probe = match &args.baseline_metrics {
                Some(metrics) => Some(CpuProbe::start(metrics).await?),
                None => None,
            };
            let mut report = drive(&args, &url, "no-op", channels, &plan, rounds).await?;
            if let Some(probe) = probe {
                report.set_server_cpu(probe.finish().await?);
            }
            drop(builtin);
            Some(report)
        }
    };

    let label = args
        .output
        .label
        .clone()
        .unwrap_or_else(|| match args.transport {
            Transport::Grpc => "banditd".into(),
            Transport::Http => "banditd (HTTP/JSON)".into(),
        });
    let probe = match &args.server_metrics {
        Some(metrics) => Some(CpuProbe::start(metrics).await?),
        None => None,
    };
    let mut report = drive(&args, &args.target, &label, target.clone(), &plan, rounds).await?;
    if let Some(probe) = probe {
        report.set_server_cpu(probe.finish().await?);
    }
    report.server_model = get_model(&target[0], &args.target, &args.model)
        .await
        .ok()
        .map(|m| ServerModel {
            model_version: m.model_version,
            decisions: m.decisions,
            rewards: m.rewards,
            training_steps: m.training_steps,
            pending_decisions: m.pending_decisions,
        });
    if let Some(base) = baseline {
        report.throughput_ratio = Some(report.decisions_per_s / base.decisions_per_s);
        if let (Some(ours), Some(theirs)) = (
            report.server_cpu_us_per_decision,
            base.server_cpu_us_per_decision,
        ) {
            report.server_cpu_ratio = Some(ours / theirs);
        }
        report.baseline = Some(Box::new(base));
    }

    if let Some(path) = &args.output.plot {
        let series = [plot::Series {
            name: format!("{} {} seed {}", report.label, report.env, report.seed),
            curve: report.curve.clone(),
        }];
        plot::draw(path, "banditd over gRPC", &series, args.output.plot_y)?;
    }
    if args.output.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.print_table();
        if let Some(path) = &args.output.plot {
            println!("  plot              {}", path.display());
        }
    }
    Ok(())
}

/// Plays the load once against `url` over `clients` (one per connection).
async fn drive(
    args: &GrpcArgs,
    url: &str,
    label: &str,
    clients: Vec<Client>,
    plan: &Plan,
    rounds: Option<u64>,
) -> anyhow::Result<GrpcReport> {
    let env = sim::from_spec(&args.env, args.seed)?;
    let env_name = env.name();
    let every = rounds.map_or(50, curve_every);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        source: Mutex::new(Source {
            env,
            rng: Xoshiro256PlusPlus::seed_from_u64(args.seed ^ 0x0a11_0ad9_e000_0001),
            missing: args.missing_rewards,
            delay: args.reward_delay,
            limit: rounds,
            deadline: args.duration.map(|d| start + d),
            taken: 0,
        }),
        stats: Mutex::new(Stats::new(every)?),
        started: AtomicU64::new(0),
    });

    let bar = match (rounds, args.duration) {
        (Some(n), _) => crate::progress_bar(
            n,
            args.output.quiet,
            "{msg} [{bar:30}] {pos}/{len} rounds, {per_sec}, eta {eta}",
        ),
        (None, Some(d)) => crate::progress_bar(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            args.output.quiet,
            "{msg} [{bar:30}] {elapsed}",
        ),
        (None, None) => crate::progress_bar(0, true, ""),
    };
    bar.set_message(label.to_owned());
    let ticker = {
        let shared = Arc::clone(&shared);
        let bar = bar.clone();
        let by_rounds = rounds.is_some();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if by_rounds {
                    bar.set_position(shared.started.load(Ordering::Relaxed));
                } else {
                    bar.set_position(u64::try_from(start.elapsed().as_millis()).unwrap_or(0));
                }
            }
        })
    };

    let delayed = match args.rate {
        None => closed_loop(&shared, &clients, args.workers).await,
        Some(rate) => open_loop(&shared, &clients, args.workers, rate).await,
    };
    // Delayed rewards still on their way.
    for set in delayed {
        set.join_all().await;
    }
    ticker.abort();
    bar.finish_and_clear();

    let stats = lock(&shared.stats);
    let rounds_started = shared.started.load(Ordering::Relaxed);
    let elapsed = stats
        .last_decision
        .map_or(Duration::ZERO, |t| t.duration_since(start))
        .as_secs_f64();
    let mut curve = stats.curve.clone();
    if curve.last().map(|p| p.decisions) != Some(stats.tally.decisions) {
        curve.push(stats.tally.point());
    }
    let errors_total = stats.errors.values().flat_map(|m| m.values()).sum();
    Ok(GrpcReport {
        mode: "grpc",
        label: label.to_owned(),
        target: url.to_owned(),
        model: plan.model.clone(),
        env: env_name,
        spec: args.env.clone(),
        seed: args.seed,
        loop_kind: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        workers: args.workers,
        // Over HTTP/1.1 each call in flight holds its own pooled connection: at most one per
        // worker.
        connections: match args.transport {
            Transport::Grpc => args.connections,
            Transport::Http => args.workers,
        },
        rate: args.rate,
        reward_delay: args.reward_delay.to_string(),
        missing_rewards: args.missing_rewards,
        rounds: rounds_started,
        decisions: stats.tally.decisions,
        rewards_sent: stats.rewards_sent,
        rewards_accepted: stats.rewards_accepted,
        rewards_missing: stats.rewards_missing,
        elapsed_s: elapsed,
        decisions_per_s: if elapsed > 0.0 {
            stats.tally.decisions as f64 / elapsed
        } else {
            f64::NAN
        },
        regret: stats.tally.regret,
        regret_reported: stats.regret_reported,
        uniform_regret: stats.tally.uniform_regret,
        normalized_regret: stats.tally.normalized_regret(),
        mean_reward: stats.tally.mean_reward(),
        latency_us: Latencies {
            choose_arm: LatencySummary::of(&stats.choose),
            report_reward: LatencySummary::of(&stats.report),
        },
        errors: stats.errors.clone(),
        errors_total,
        server_model: None,
        curve: thin(curve),
        baseline: None,
        throughput_ratio: None,
        server_cpu_s: None,
        server_cpu_us_per_decision: None,
        server_cpu_ratio: None,
    })
}

/// Keeps at most [`MAX_CURVE_POINTS`] evenly spaced points, and always the last.
fn thin(curve: Vec<CurvePoint>) -> Vec<CurvePoint> {
    if curve.len() <= MAX_CURVE_POINTS {
        return curve;
    }
    let step = curve.len().div_ceil(MAX_CURVE_POINTS);
    let last = curve.last().copied();
    let mut thinned: Vec<CurvePoint> = curve.into_iter().step_by(step).collect();
    if thinned.last().copied() != last
        && let Some(last) = last
    {
        thinned.push(last);
    }
    thinned
}

/// `--connections` connections to each of the comma-separated `--target`s, interleaved
/// (target 1, target 2, ..., target 1, ...), so that workers (closed loop) and rounds (open
/// loop), which take connections in turn, go round robin over the targets: a cluster of
/// replicas is driven as one service.
async fn connect_targets(args: &GrpcArgs) -> anyhow::Result<Vec<Client>> {
    let mut per_target = Vec::new();
    for url in args
        .target
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let clients = Connector::new(url, args.transport, &args.connect, args.request_timeout)?
            .connect(args.connections)
            .await?;
        per_target.push(clients.into_iter());
    }
    anyhow::ensure!(!per_target.is_empty(), "--target names no server");
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        for target in &mut per_target {
            clients.extend(target.next());
        }
    }
    Ok(clients)
}

/// N workers, each: take a round, decide, report, repeat. Returns each worker's delayed
/// reports, still running.
async fn closed_loop(shared: &Arc<Shared>, clients: &[Client], workers: u64) -> Vec<JoinSet<()>> {
    let mut tasks = JoinSet::new();
    for w in 0..workers {
        let shared = Arc::clone(shared);
        let mut client = clients[(w as usize) % clients.len()].clone();
        tasks.spawn(async move {
            let mut delayed = JoinSet::new();
            let mut backoff = Backoff::default();
            loop {
                // Before taking a round: a backed-off worker does not hold one meanwhile.
                backoff.wait().await;
                let Some(job) = shared.next_job() else {
                    break;
                };
                let Some((report, delay)) = shared
                    .choose(&mut client, &mut backoff, job, Instant::now())
                    .await
                else {
                    continue;
                };
                if delay.is_zero() {
                    shared.report(&mut client, &mut backoff, report).await;
                } else {
                    let shared = Arc::clone(&shared);
                    let mut client = client.clone();
                    delayed.spawn(async move {
                        tokio::time::sleep(delay).await;
                        shared
                            .report(&mut client, &mut Backoff::default(), report)
                            .await;
                    });
                }
                while delayed.try_join_next().is_some() {}
            }
            delayed
        });
    }
    let mut delayed = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(set) => delayed.push(set),
            Err(e) => eprintln!("a worker failed: {e}"),
        }
    }
    delayed
}

/// Starts round k at `start + k / rate`, with at most `max_in_flight` decisions in flight
/// (waiting for a slot counts in the latency, so a slow server cannot hide its queue by
/// slowing the schedule down). Returns the tasks still running.
async fn open_loop(
    shared: &Arc<Shared>,
    clients: &[Client],
    max_in_flight: u64,
    rate: f64,
) -> Vec<JoinSet<()>> {
    let slots = Arc::new(Semaphore::new(
        usize::try_from(max_in_flight).unwrap_or(usize::MAX),
    ));
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0u64.. {
        let scheduled = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(scheduled).await;
        // Latency counts from here: the timer's own millisecond granularity is not the
        // server's doing, but waiting for a free in-flight slot is.
        let due = Instant::now();
        let Some(job) = shared.next_job() else {
            break;
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let shared = Arc::clone(shared);
        let mut client = clients[(k as usize) % clients.len()].clone();
        // Open loop keeps its schedule whatever the answers (that is its point); only a
        // reward report backs off and retries.
        tasks.spawn(async move {
            let mut backoff = Backoff::default();
            let reply = shared.choose(&mut client, &mut backoff, job, due).await;
            if let Some((report, delay)) = reply {
                let mut backoff = Backoff::default();
                if delay.is_zero() {
                    shared.report(&mut client, &mut backoff, report).await;
                    drop(slot);
                } else {
                    drop(slot);
                    tokio::time::sleep(delay).await;
                    shared.report(&mut client, &mut backoff, report).await;
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    vec![tasks]
}
