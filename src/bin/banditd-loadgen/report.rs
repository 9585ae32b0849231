//! The reports: what the JSON output holds, and the tables printed at the end of a run.

use std::collections::BTreeMap;

use banditd::config::ModelConfig;
use banditd::harness::{CurvePoint, InprocRun, RatePoint};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plot::Series;

/// Latency percentiles of one RPC, in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct LatencySummary {
    /// Calls measured (successful or not).
    pub(crate) count: u64,
    pub(crate) mean: f64,
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl LatencySummary {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            mean: if h.is_empty() { f64::NAN } else { h.mean() },
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }
}

/// Latency of both RPCs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Latencies {
    pub(crate) choose_arm: LatencySummary,
    pub(crate) report_reward: LatencySummary,
}

/// The server's own counters for the model after the run (`GetModel`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ServerModel {
    pub(crate) model_version: u64,
    pub(crate) decisions: u64,
    pub(crate) rewards: u64,
    pub(crate) training_steps: u64,
    pub(crate) pending_decisions: u64,
}

/// The report of one `grpc` run (and, nested, of its baseline).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GrpcReport {
    pub(crate) mode: &'static str,
    pub(crate) label: String,
    pub(crate) target: String,
    pub(crate) model: String,
    pub(crate) env: String,
    pub(crate) spec: String,
    pub(crate) seed: u64,
    /// `closed` (workers wait for their responses) or `open` (a fixed start rate).
    pub(crate) loop_kind: &'static str,
    pub(crate) workers: u64,
    pub(crate) connections: u64,
    pub(crate) rate: Option<f64>,
    pub(crate) reward_delay: String,
    pub(crate) missing_rewards: f64,
    /// Rounds started (a ChooseArm was sent).
    pub(crate) rounds: u64,
    /// Successful decisions (regret counts these).
    pub(crate) decisions: u64,
    /// ReportReward calls sent.
    pub(crate) rewards_sent: u64,
    /// ReportReward calls that succeeded.
    pub(crate) rewards_accepted: u64,
    /// Rewards deliberately never sent (`--missing-rewards`).
    pub(crate) rewards_missing: u64,
    /// Seconds from the first decision to the last (excluding the wait for delayed rewards).
    pub(crate) elapsed_s: f64,
    pub(crate) decisions_per_s: f64,
    /// Expected regret of every decision.
    pub(crate) regret: f64,
    /// Regret sent with accepted rewards: what the server's `banditd_regret_sum` adds up.
    pub(crate) regret_reported: f64,
    /// Uniform random's expected regret on the same rounds.
    pub(crate) uniform_regret: f64,
    /// 100 × regret / uniform regret.
    pub(crate) normalized_regret: f64,
    pub(crate) mean_reward: f64,
    pub(crate) latency_us: Latencies,
    /// Failed calls: method → gRPC code name → count.
    pub(crate) errors: BTreeMap<String, BTreeMap<String, u64>>,
    pub(crate) errors_total: u64,
    pub(crate) server_model: Option<ServerModel>,
    pub(crate) curve: Vec<CurvePoint>,
    /// The same load against the no-op server, when `--baseline` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<Box<GrpcReport>>,
    /// decisions/s of this run ÷ decisions/s of the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput_ratio: Option<f64>,
    /// The server's CPU seconds over the run (`--server-metrics`, `--baseline-metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_s: Option<f64>,
    /// `server_cpu_s` per successful decision, in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_us_per_decision: Option<f64>,
    /// This server's CPU per decision ÷ the baseline's (both metrics URLs given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_ratio: Option<f64>,
}

fn fmt_f(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "-".into()
    }
}

impl GrpcReport {
    /// Records the server's CPU seconds over the run, and per decision.
    pub(crate) fn set_server_cpu(&mut self, seconds: f64) {
        self.server_cpu_s = Some(seconds);
        self.server_cpu_us_per_decision =
            (self.decisions > 0).then(|| seconds * 1e6 / self.decisions as f64);
    }

    /// The human-readable table.
    pub(crate) fn print_table(&self) {
        println!(
            "banditd-loadgen grpc: {} (seed {}) -> {} model {:?}{}",
            self.env,
            self.seed,
            self.target,
            self.model,
            if self.label.is_empty() {
                String::new()
            } else {
                format!(" [{}]", self.label)
            }
        );
        let load = match self.rate {
            Some(rate) => format!(
                "open loop at {rate}/s, at most {} in flight, {} connection(s)",
                self.workers, self.connections
            ),
            None => format!(
                "closed loop, {} worker(s), {} connection(s)",
                self.workers, self.connections
            ),
        };
        println!("  load              {load}");
        println!(
            "  rewards           delay {}, missing {:.1}% ({} sent, {} accepted, {} withheld)",
            self.reward_delay,
            100.0 * self.missing_rewards,
            self.rewards_sent,
            self.rewards_accepted,
            self.rewards_missing
        );
        println!(
            "  decisions         {} of {} rounds in {:.2} s = {} decisions/s",
            self.decisions,
            self.rounds,
            self.elapsed_s,
            fmt_f(self.decisions_per_s, 0)
        );
        println!(
            "  regret            {} (normalized {}; uniform random = 100, oracle = 0)",
            fmt_f(self.regret, 2),
            fmt_f(self.normalized_regret, 1)
        );
        println!(
            "  regret reported   {} (sent with accepted rewards: banditd_regret_sum)",
            fmt_f(self.regret_reported, 2)
        );
        println!("  mean reward       {}", fmt_f(self.mean_reward, 4));
        print_latency_table(&[("", &self.latency_us)]);
        print_errors(&self.errors);
        if let Some(server) = &self.server_model {
            println!(
                "  server            version {}, {} decisions, {} rewards, {} steps, {} pending",
                server.model_version,
                server.decisions,
                server.rewards,
                server.training_steps,
                server.pending_decisions
            );
        }
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_us_per_decision) {
            println!(
                "  server CPU        {} s = {} µs per decision",
                fmt_f(cpu, 2),
                fmt_f(per, 1)
            );
        }
        if let (Some(base), Some(ratio)) = (&self.baseline, self.throughput_ratio) {
            println!();
            println!("  against the no-op server at {} (same load):", base.target);
            println!(
                "  throughput        banditd {} /s, no-op {} /s: ratio {}",
                fmt_f(self.decisions_per_s, 0),
                fmt_f(base.decisions_per_s, 0),
                fmt_f(ratio, 3)
            );
            if let (Some(per), Some(ratio)) =
                (base.server_cpu_us_per_decision, self.server_cpu_ratio)
            {
                println!(
                    "  server CPU        banditd {} µs, no-op {} µs per decision: ratio {}",
                    fmt_f(self.server_cpu_us_per_decision.unwrap_or(f64::NAN), 1),
                    fmt_f(per, 1),
                    fmt_f(ratio, 2)
                );
            }
            print_latency_table(&[("banditd ", &self.latency_us), ("no-op ", &base.latency_us)]);
            print_errors(&base.errors);
        }
    }
}

fn print_latency_table(rows: &[(&str, &Latencies)]) {
    println!(
        "  {:<28}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "latency (µs)", "p50", "p90", "p99", "max", "mean"
    );
    for (prefix, lat) in rows {
        for (name, s) in [
            ("ChooseArm", &lat.choose_arm),
            ("ReportReward", &lat.report_reward),
        ] {
            if s.count == 0 {
                continue;
            }
            println!(
                "  {:<28}{:>9}{:>9}{:>9}{:>9}{:>9}",
                format!("  {prefix}{name}"),
                s.p50,
                s.p90,
                s.p99,
                s.max,
                fmt_f(s.mean, 0)
            );
        }
    }
}

fn print_errors(errors: &BTreeMap<String, BTreeMap<String, u64>>) {
    if errors.is_empty() {
        println!("  errors            none");
        return;
    }
    for (method, codes) in errors {
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("  errors            {method}: {}", codes.join(", "));
    }
}

/// One run of `inproc`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InprocRunReport {
    pub(crate) env: String,
    pub(crate) spec: String,
    pub(crate) seed: u64,
    pub(crate) rounds: u64,
    pub(crate) regret: f64,
    pub(crate) uniform_regret: f64,
    pub(crate) normalized_regret: f64,
    pub(crate) mean_reward: f64,
    pub(crate) steps: u64,
    pub(crate) model_version: u64,
    pub(crate) elapsed_s: f64,
    /// The decision policy that played (`mc_dropout`, `neural_linear`, ...).
    pub(crate) policy: &'static str,
    /// The model as played: the base model with `--set` applied, reshaped to the
    /// environment, its seed mixed with the run's, its drop rates the effective ones.
    pub(crate) model: ModelConfig,
    pub(crate) curve: Vec<CurvePoint>,
    /// With `concrete_dropout`: the learned drop rates at the curve's points.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) drop_rates: Vec<RatePoint>,
}

impl InprocRunReport {
    pub(crate) fn new(spec: &str, seed: u64, model: &ModelConfig, run: &InprocRun) -> Self {
        let mut model = model.clone();
        model.network.drop_rates = Some(model.effective_drop_rates());
        Self {
            env: run.env.clone(),
            spec: spec.to_owned(),
            seed,
            rounds: run.rounds,
            regret: run.tally.regret,
            uniform_regret: run.tally.uniform_regret,
            normalized_regret: run.tally.normalized_regret(),
            mean_reward: run.tally.mean_reward(),
            steps: run.steps,
            model_version: run.version,
            elapsed_s: run.elapsed.as_secs_f64(),
            policy: model.policy.kind.as_str(),
            model,
            curve: run.curve.clone(),
            drop_rates: run.drop_rates.clone(),
        }
    }
}

/// Mean ± std over the seeds of one environment.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InprocSummary {
    pub(crate) env: String,
    pub(crate) spec: String,
    pub(crate) runs: usize,
    pub(crate) normalized_regret_mean: f64,
    pub(crate) normalized_regret_std: f64,
    pub(crate) regret_mean: f64,
    pub(crate) regret_std: f64,
    pub(crate) mean_reward_mean: f64,
    pub(crate) mean_reward_std: f64,
}

/// The report of `inproc`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InprocReport {
    pub(crate) mode: &'static str,
    pub(crate) label: Option<String>,
    pub(crate) rounds: u64,
    pub(crate) seeds: Vec<u64>,
    /// The `--model-config` file, or none for the embedded default's models.
    pub(crate) model_config: Option<String>,
    /// The `--set` settings applied to the model.
    pub(crate) settings: Vec<String>,
    pub(crate) runs: Vec<InprocRunReport>,
    pub(crate) summary: Vec<InprocSummary>,
}

impl InprocReport {
    /// The per-run lines and the per-environment summary.
    pub(crate) fn print_table(&self) {
        println!(
            "banditd-loadgen inproc: {} rounds, seeds {:?}, model {}{}",
            self.rounds,
            self.seeds,
            self.model_config.as_deref().unwrap_or("embedded default"),
            if self.settings.is_empty() {
                String::new()
            } else {
                format!(" with {}", self.settings.join(" "))
            }
        );
        let w = self
            .runs
            .iter()
            .map(|r| r.env.chars().count())
            .max()
            .unwrap_or(0)
            .max("environment".len())
            + 2;
        println!(
            "  {:<w$}{:>6}{:>14}{:>12}{:>13}{:>9}",
            "environment", "seed", "regret", "normalized", "mean reward", "s"
        );
        for r in &self.runs {
            println!(
                "  {:<w$}{:>6}{:>14}{:>12}{:>13}{:>9}",
                r.env,
                r.seed,
                fmt_f(r.regret, 2),
                fmt_f(r.normalized_regret, 2),
                fmt_f(r.mean_reward, 4),
                fmt_f(r.elapsed_s, 2)
            );
        }
        if self.runs.iter().any(|r| !r.drop_rates.is_empty()) {
            println!();
            println!("  learned drop rates at the end (input, then each hidden layer):");
            for r in &self.runs {
                if let Some(last) = r.drop_rates.last() {
                    let rates: Vec<String> = last.drop_rates.iter().map(|p| fmt_f(*p, 4)).collect();
                    println!("  {:<w$}{:>6}  [{}]", r.env, r.seed, rates.join(", "));
                }
            }
        }
        println!();
        println!(
            "  {:<w$}{:>6}{:>22}{:>22}",
            "environment", "runs", "normalized regret", "mean reward"
        );
        for s in &self.summary {
            println!(
                "  {:<w$}{:>6}{:>22}{:>22}",
                s.env,
                s.runs,
                format!(
                    "{} ± {}",
                    fmt_f(s.normalized_regret_mean, 2),
                    fmt_f(s.normalized_regret_std, 2)
                ),
                format!(
                    "{} ± {}",
                    fmt_f(s.mean_reward_mean, 4),
                    fmt_f(s.mean_reward_std, 4)
                ),
            );
        }
        println!("  (normalized regret: uniform random = 100, oracle = 0)");
    }
}

/// The regret curves of a saved report: one per inproc run, or the grpc run's.
pub(crate) fn curves_of(value: &serde_json::Value, fallback_name: &str) -> Option<Vec<Series>> {
    let curve = |v: &serde_json::Value| -> Option<Vec<CurvePoint>> {
        serde_json::from_value(v.get("curve")?.clone()).ok()
    };
    match value.get("mode")?.as_str()? {
        "inproc" => {
            let prefix = value
                .get("label")
                .and_then(|l| l.as_str())
                .map(|l| format!("{l}: "))
                .unwrap_or_default();
            value
                .get("runs")?
                .as_array()?
                .iter()
                .map(|run| {
                    Some(Series {
                        name: format!(
                            "{prefix}{} seed {}",
                            run.get("env")?.as_str()?,
                            run.get("seed")?.as_u64()?
                        ),
                        curve: curve(run)?,
                    })
                })
                .collect()
        }
        "grpc" => {
            let label = value
                .get("label")
                .and_then(|l| l.as_str())
                .filter(|l| !l.is_empty())
                .unwrap_or(fallback_name);
            Some(vec![Series {
                name: label.to_owned(),
                curve: curve(value)?,
            }])
        }
        _ => None,
    }
}
