//! Command-line flags and their parsers (durations, reward delays, fractions).

use std::{fmt, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and regret benchmark for banditd.
#[derive(Debug, Parser)]
#[command(version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Drive a running banditd over gRPC and report regret, throughput, latency and errors.
    Grpc(GrpcArgs),
    /// Play environments against the library's policy and learner in this process (no
    /// gRPC), for several seeds; print normalized regret mean ± std per environment.
    Inproc(InprocArgs),
    /// Write an environment's rounds as JSON lines (a header line, then one per round).
    Dump(DumpArgs),
    /// Draw the regret curves of saved `--json` reports into one SVG.
    Plot(PlotArgs),
    /// Create, change, roll back or delete a model on a running banditd (admin token).
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// The banditd server.
    #[arg(
        long,
        env = "BANDITD_LOADGEN_TARGET",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) target: String,
    /// Per-request deadline (a rollback or update restarts the model's learner).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,
    /// Token and TLS options.
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    #[command(subcommand)]
    pub(crate) action: AdminAction,
}

/// A model's kind, as `admin create --kind` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SpecKind {
    /// One output per configured arm.
    FixedArms,
    /// Each candidate brings its features.
    PerArmFeatures,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminAction {
    /// Create a model (serving at once); drive it with `grpc --model NAME`.
    Create {
        /// Its name.
        #[arg(long)]
        name: String,
        /// Its kind.
        #[arg(long, value_enum, default_value_t = SpecKind::FixedArms)]
        kind: SpecKind,
        /// Length of every context.
        #[arg(long)]
        context_dim: u32,
        /// The arm ids of a fixed-arm model, comma-separated.
        #[arg(long, value_delimiter = ',')]
        arms: Vec<String>,
        /// Length of each candidate's features (per-arm models).
        #[arg(long, default_value_t = 0)]
        arm_feature_dim: u32,
        /// Hidden layer widths, comma-separated (default: the server's, [100, 100]).
        #[arg(long, value_delimiter = ',')]
        hidden_layers: Vec<u32>,
        /// Any other setting, as in its `[[models]]` table; repeatable (`--set
        /// policy=greedy`, `--set 'holdout={ fraction = 0.1 }'`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Change live settings (learning_rate, policy, epsilon, reward_window_seconds,
    /// default_reward, holdout, ...).
    Update {
        /// The model.
        #[arg(long)]
        model: String,
        /// The settings to change; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
        settings: Vec<String>,
    },
    /// Stop serving a model and stop its learner.
    Delete {
        /// The model.
        #[arg(long)]
        model: String,
        /// Delete its checkpoints too.
        #[arg(long)]
        drop_checkpoints: bool,
    },
    /// List a model's retained checkpoints (the versions `rollback` can serve).
    Checkpoints {
        /// The model.
        #[arg(long)]
        model: String,
    },
    /// Serve a retained checkpoint's weights again (as a new version).
    Rollback {
        /// The model.
        #[arg(long)]
        model: String,
        /// A version `checkpoints` listed.
        #[arg(long)]
        version: u64,
    },
    /// Show a model: settings, version, counters, holdout groups and lift.
    Get {
        /// The model.
        #[arg(long)]
        model: String,
    },
}

/// The transport `grpc` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    /// `banditd.v1.BanditService` over gRPC.
    Grpc,
    /// The HTTP/JSON face (`POST /v1/models/{model}:choose`, ...).
    Http,
}

/// What the regret plot shows on its y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlotY {
    /// Cumulative regret as a percentage of uniform random's on the same rounds.
    Normalized,
    /// Cumulative regret.
    Cumulative,
}

#[derive(Debug, Args)]
pub(crate) struct GrpcArgs {
    /// The banditd server, or several, comma-separated (the replicas of a cluster): each gets
    /// `--connections` connections, and workers (or open-loop rounds) take them round robin.
    #[arg(
        long,
        env = "BANDITD_LOADGEN_TARGET",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) target: String,
    /// The model to drive; it must fit the environment (context dimension, arms).
    #[arg(long, default_value = "wheel")]
    pub(crate) model: String,
    /// The simulated environment (see `inproc --help` for the forms).
    #[arg(long, default_value = "wheel:0.5")]
    pub(crate) env: String,
    /// Seed of the environment, the missing rewards and the reward delays.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Number of rounds (decisions) to play [default: 5000 unless --duration is given].
    #[arg(long)]
    pub(crate) rounds: Option<u64>,
    /// How long to run, e.g. `30s`, `2m`, `500ms` (with --rounds: whichever ends first).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Closed loop: concurrent workers (each decides, reports, repeats). Open loop: the
    /// most requests in flight.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(crate) workers: u64,
    /// HTTP/2 connections the workers share, round robin.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) connections: u64,
    /// Open loop: start decisions at this rate per second regardless of responses
    /// (latency then counts from when a decision was due, waiting for one of the
    /// `--workers` in-flight slots included, so queueing is not hidden).
    #[arg(long, value_parser = parse_rate)]
    pub(crate) rate: Option<f64>,
    /// Delay before each reward is reported: `none`, `fixed:50ms`, or `exp:50ms`
    /// (exponential with that mean).
    #[arg(long, default_value = "none", value_parser = parse_delay)]
    pub(crate) reward_delay: RewardDelay,
    /// Fraction of rewards never reported (seeded), so the reward window and default-reward
    /// paths are exercised.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    pub(crate) missing_rewards: f64,
    /// Run the same load against a no-op server first and report banditd's throughput as
    /// a ratio to it: a URL (`cargo run --release --example noop_server`), or `builtin`
    /// for one started inside this process on a free port, on its own runtime.
    #[arg(long)]
    pub(crate) baseline: Option<String>,
    /// The server's Prometheus endpoint (e.g. http://127.0.0.1:9464/metrics): its
    /// `process_cpu_seconds_total` is read before and after the run, and the report gives
    /// the server's CPU per decision (waits one telemetry period before each reading).
    #[arg(long)]
    pub(crate) server_metrics: Option<String>,
    /// The same for the `--baseline` server (`noop_server --metrics-addr`): the report then
    /// also gives the ratio of the two servers' CPU per decision.
    #[arg(long, requires = "baseline")]
    pub(crate) baseline_metrics: Option<String>,
    /// Per-request deadline.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,
    /// How to reach the server: gRPC, or its HTTP/JSON face (`[http] addr`; give that port
    /// as --target, e.g. http://127.0.0.1:8080). Over HTTP every call in flight holds its
    /// own keep-alive HTTP/1.1 connection, so --connections does not apply.
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub(crate) transport: Transport,
    /// Token and TLS options.
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// Report, plot and progress options.
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// How `grpc` authenticates and secures its connections.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Bearer token sent with every call. Prefer the environment variable: the command line
    /// is visible to every user of the machine (`ps`).
    #[arg(long, env = "BANDITD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PEM CA certificate to verify the server with; turns TLS on (as does an `https://`
    /// target).
    #[arg(long)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS).
    #[arg(long, requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,
    /// The name to verify the server's certificate against (default: the target's host).
    #[arg(long)]
    pub(crate) tls_domain: Option<String>,
}

/// How `grpc` and `inproc` report: a table or JSON, an optional plot, a progress bar.
#[derive(Debug, Args)]
pub(crate) struct OutputArgs {
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Write a regret-over-time plot (SVG), one line per run (environment and seed).
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// What the plot's y axis shows.
    #[arg(long, value_enum, default_value_t = PlotY::Normalized)]
    pub(crate) plot_y: PlotY,
    /// A name for this run in reports and plots.
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InprocArgs {
    /// An environment; repeat for several. Forms: `wheel`, `wheel:DELTA`, `csv:PATH`,
    /// `csv:PATH:LABEL`, `per-arm`, `per-arm:CTX,ARM,CATALOGUE,CANDIDATES`, `drift@N:SPEC`,
    /// `noise@ARM,SIGMA:SPEC` (arm ARM's rewards get N(0, SIGMA²) noise added).
    #[arg(long = "env", required = true)]
    pub(crate) envs: Vec<String>,
    /// Seeds, comma-separated; each seeds the environment and (mixed in) the model.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub(crate) seeds: Vec<u64>,
    /// Rounds per run.
    #[arg(long, default_value_t = 5000)]
    pub(crate) rounds: u64,
    /// A banditd configuration file whose model to use instead of the embedded default's
    /// model of the environment's kind (`wheel` or `items`, reshaped to the environment).
    #[arg(long)]
    pub(crate) model_config: Option<PathBuf>,
    /// The model of `--model-config` to use (needed when it has several).
    #[arg(long, requires = "model_config")]
    pub(crate) model: Option<String>,
    /// Change a model setting, as in its `[[models]]` table; repeatable. Values are TOML,
    /// dotted keys reach sub-tables: `--set policy=neural_linear`, `--set epsilon=0.1`,
    /// `--set neural_linear.refresh_every=100`, `--set 'hidden_layers=[50, 50]'`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(crate) settings: Vec<String>,
    /// Report, plot and progress options.
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// The environment.
    #[arg(long)]
    pub(crate) env: String,
    /// Its seed.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Rounds to write.
    #[arg(long, default_value_t = 5000)]
    pub(crate) rounds: u64,
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PlotArgs {
    /// Reports written by `grpc --json` or `inproc --json`.
    #[arg(required = true)]
    pub(crate) reports: Vec<PathBuf>,
    /// The SVG to write.
    #[arg(long, short)]
    pub(crate) output: PathBuf,
    /// The plot's title.
    #[arg(long, default_value = "regret over time")]
    pub(crate) title: String,
    /// What the y axis shows.
    #[arg(long, value_enum, default_value_t = PlotY::Normalized)]
    pub(crate) plot_y: PlotY,
}

/// When a reward is reported after its decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RewardDelay {
    /// Right after the decision.
    None,
    /// After this long.
    Fixed(Duration),
    /// After an exponentially distributed time with this mean.
    Exp(Duration),
}

impl fmt::Display for RewardDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Fixed(d) => write!(f, "fixed:{d:?}"),
            Self::Exp(d) => write!(f, "exp:{d:?}"),
        }
    }
}

/// Parses `none`, `fixed:DURATION` or `exp:DURATION`.
pub(crate) fn parse_delay(text: &str) -> Result<RewardDelay, String> {
    let text = text.trim();
    if text == "none" || text == "0" {
        return Ok(RewardDelay::None);
    }
    let Some((kind, value)) = text.split_once(':') else {
        return Err(format!(
            "{text:?}: expected none, fixed:DURATION or exp:DURATION (e.g. exp:50ms)"
        ));
    };
    let duration = parse_duration(value)?;
    match kind {
        "fixed" => Ok(RewardDelay::Fixed(duration)),
        "exp" if duration.is_zero() => Err("exp: the mean must be positive".into()),
        "exp" => Ok(RewardDelay::Exp(duration)),
        _ => Err(format!(
            "{kind:?}: expected none, fixed:DURATION or exp:DURATION"
        )),
    }
}

/// Parses a duration: a number followed by `us`, `ms`, `s`, `m` or `h` (seconds if bare).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 500ms, 30s or 2m"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use us, ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a fraction in [0, 1].
fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not in [0, 1]"))
    }
}

/// Parses a positive, finite rate.
fn parse_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value}: the rate must be a positive number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_delays() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_delay("none"), Ok(RewardDelay::None));
        assert_eq!(
            parse_delay("fixed:50ms"),
            Ok(RewardDelay::Fixed(Duration::from_millis(50)))
        );
        assert_eq!(
            parse_delay("exp:1s"),
            Ok(RewardDelay::Exp(Duration::from_secs(1)))
        );
        assert!(parse_delay("exp:0ms").is_err());
        assert!(parse_delay("gauss:1s").is_err());
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_rate("0").is_err());
    }
}
