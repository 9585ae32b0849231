//! `banditd evaluate` and `banditd train`: flags, reading the log they name, and what they
//! print. The binary only dispatches here.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use super::{
    evaluate::{self, Candidate, CandidatePolicy, MissingPropensity, Options},
    logs::{self, Log, ObdOptions},
    plot,
    replay::RewardModel,
    warm::{self, TrainOptions, Weighting},
};
use crate::config::{Config, ModelConfig, ModelKind};

/// Where a log comes from.
#[derive(Debug, Args)]
pub struct Source {
    /// The log: a `banditd export` file (JSON lines), an Open Bandit Dataset CSV (`.csv`),
    /// or a data directory. Default: the data directory (`--data-dir`).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Open Bandit Dataset CSV: the number of items (default: the highest item_id + 1).
    #[arg(long)]
    pub items: Option<usize>,
    /// Open Bandit Dataset CSV: keep only rows at this position (as written in the file).
    #[arg(long)]
    pub position: Option<i64>,
}

/// What DR's reward model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RewardModelArg {
    /// The logged model's network, trained on the log in order, each prediction made
    /// before it learns that decision.
    Network,
    /// Each arm's mean logged reward so far.
    ArmMean,
}

/// `banditd evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The log.
    #[command(flatten)]
    pub source: Source,
    /// The logged model: which model's decisions to read, and the configuration candidates
    /// start from. Needed when the log or the configuration has several.
    #[arg(long)]
    pub model: Option<String>,
    /// A candidate policy, repeatable: `POLICY [KEY=VALUE ...]` (a policy name, then model
    /// settings as `banditd-loadgen inproc --set` takes them, e.g. `'epsilon_greedy
    /// epsilon=0.2'`) or `model:NAME [KEY=VALUE ...]` (another model of the configuration
    /// with the same inputs and arms) or `probabilities:PATH` (a policy computed elsewhere:
    /// one JSON array of probabilities per line, one line per rewarded decision). A banditd
    /// log's model is evaluated as configured too (first row).
    #[arg(long = "candidate", value_name = "SPEC")]
    pub candidates: Vec<String>,
    /// Posterior draws per propensity of a Thompson policy (`mc_dropout`, `neural_linear`).
    #[arg(long, default_value_t = 100)]
    pub propensity_samples: usize,
    /// Decisions logged without a propensity: `refuse` the log (default) or impute
    /// `uniform` 1/n (right only when the logging policy chose uniformly at random).
    #[arg(long, value_enum, default_value_t = MissingArg::Refuse)]
    pub missing_propensity: MissingArg,
    /// DR's reward model.
    #[arg(long, value_enum, default_value_t = RewardModelArg::Network)]
    pub reward_model: RewardModelArg,
    /// DR's reward model's predictions from a file instead: one JSON array per line, one
    /// value per candidate, one line per rewarded decision in the order evaluate reads them
    /// (banditd logs: by decision time, then id; CSVs: file order).
    #[arg(long, conflicts_with = "reward_model")]
    pub reward_predictions: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also draw the estimates with their intervals into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// See [`EvaluateArgs::missing_propensity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MissingArg {
    /// Refuse the log.
    Refuse,
    /// Impute 1/n.
    Uniform,
}

/// `banditd train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The model to warm-start (a model of the configuration).
    #[arg(long)]
    pub model: String,
    /// The log.
    #[command(flatten)]
    pub source: Source,
    /// Which model's decisions to read from a banditd log (default: `--model`'s name).
    #[arg(long)]
    pub from_model: Option<String>,
    /// Passes over the examples.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Weight examples by inverse propensity (repetition, see README).
    #[arg(long)]
    pub ips_weighting: bool,
    /// The most copies of one example under `--ips-weighting`.
    #[arg(long, default_value_t = 20)]
    pub max_repeat: usize,
}

fn read(source: &Source, data_dir: &Path, model: Option<&str>) -> anyhow::Result<(Log, String)> {
    let path = source.from.clone().unwrap_or_else(|| data_dir.to_owned());
    let name = path.display().to_string();
    let log = if path.is_dir() {
        logs::read_data_dir(&path, model)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        logs::read_obd(
            &path,
            ObdOptions {
                items: source.items,
                position: source.position,
            },
        )?
    } else if path.exists() {
        logs::read_export(&path, model)?
    } else {
        bail!("{name} does not exist (give --from, or --data-dir for a data directory)");
    };
    Ok((log, name))
}

/// The logged model's configuration: the named (or only) model of the configuration; for an
/// Open Bandit Dataset log without `--config`, a fixed-arm model of its items and context.
fn logged_model(
    config: &Config,
    name: Option<&str>,
    log: &Log,
    explicit: bool,
) -> anyhow::Result<ModelConfig> {
    let name = name.or(log.model.as_deref());
    if let Some(name) = name {
        return config
            .models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .with_context(|| {
                format!(
                    "no model {name:?} in the configuration (models: {:?}); give --config",
                    config.models.iter().map(|m| &m.name).collect::<Vec<_>>()
                )
            });
    }
    if !log.arms.is_empty() && !explicit {
        let dim = log.decisions.first().map_or(0, |d| d.context.len());
        let mut model = ModelConfig::new("obd", ModelKind::FixedArms, dim);
        model.arms = log.arms.clone();
        return Ok(model);
    }
    match config.models.as_slice() {
        [only] => Ok(only.clone()),
        _ => bail!("name the logged model (--model)"),
    }
}

fn read_predictions(path: &Path) -> anyhow::Result<Vec<Vec<f64>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{}: line {}: not a JSON array of numbers",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// Runs `banditd evaluate`.
///
/// # Errors
/// The log cannot be read or is refused, a candidate does not parse, or the output fails.
pub fn evaluate(config: &Config, args: &EvaluateArgs) -> anyhow::Result<()> {
    if let Some(p) = &args.plot {
        plot::check_path(p)?;
    }
    let (log, source) = read(
        &args.source,
        &config.storage.data_dir,
        args.model.as_deref(),
    )?;
    let explicit = args.model.is_some();
    let model = logged_model(config, args.model.as_deref(), &log, explicit)?;
    // The logged model's own configuration, replayed, when the log is a banditd model's:
    // how far its replay is from the actual mean reward shows what replay itself costs.
    let mut candidates = Vec::new();
    if log.model.is_some() || explicit {
        candidates.push(Candidate {
            label: format!("as configured ({})", model.policy.kind.as_str()),
            policy: CandidatePolicy::Replayed(Box::new(model.clone())),
        });
    }
    for spec in &args.candidates {
        candidates.push(evaluate::parse_candidate(spec, &model, &config.models)?);
    }
    let reward_model = match (&args.reward_predictions, args.reward_model) {
        (Some(path), _) => RewardModel::Given(read_predictions(path)?),
        (None, RewardModelArg::Network) => RewardModel::Network,
        (None, RewardModelArg::ArmMean) => RewardModel::ArmMean,
    };
    let options = Options {
        propensity_samples: args.propensity_samples,
        missing: match args.missing_propensity {
            MissingArg::Refuse => MissingPropensity::Refuse,
            MissingArg::Uniform => MissingPropensity::Uniform,
        },
        reward_model,
    };
    let report = evaluate::evaluate(&log, &source, &model, &candidates, &options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", evaluate::table(&report));
    }
    if let Some(path) = &args.plot {
        draw(path, &report)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// The report's estimates as intervals, one colour per estimator.
fn draw(path: &Path, report: &evaluate::Report) -> anyhow::Result<()> {
    let interval = |label: &str, e: &super::estimate::Estimate| plot::Interval {
        label: label.to_owned(),
        value: e.value,
        low: e.low,
        high: e.high,
    };
    let mut groups: Vec<(String, Vec<plot::Interval>)> = vec![(
        "logged (actual)".into(),
        vec![interval("logged", &report.logged)],
    )];
    for (name, pick) in [
        (
            "IPS",
            (|e: &super::estimate::Estimates| e.ips) as fn(&_) -> _,
        ),
        ("SNIPS", |e| e.snips),
        ("DR", |e| e.dr),
    ] {
        groups.push((
            name.into(),
            report
                .policies
                .iter()
                .map(|p| interval(&p.label, &pick(&p.estimates)))
                .collect(),
        ));
    }
    let (lo, hi) = groups
        .iter()
        .flat_map(|g| &g.1)
        .filter(|i| i.low.is_finite() && i.high.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), i| {
            (lo.min(i.low), hi.max(i.high))
        });
    let pad = ((hi - lo) * 0.1).max(1e-3);
    let range = if lo.is_finite() {
        (lo - pad, hi + pad)
    } else {
        (0.0, 1.0)
    };
    plot::intervals(
        path,
        plot::Axes {
            title: &format!("estimated mean reward, {} decisions", report.decisions),
            x: "policy",
            y: "mean reward (95 % interval)",
            y_range: range,
        },
        &groups,
    )?;
    Ok(())
}

/// Runs `banditd train`.
///
/// # Errors
/// The model is not configured, the log cannot be read or does not fit it, or the data
/// directory cannot take the warm start.
pub fn train(config: &Config, args: &TrainArgs) -> anyhow::Result<()> {
    let model = config
        .models
        .iter()
        .find(|m| m.name == args.model)
        .cloned()
        .with_context(|| format!("no model {:?} in the configuration", args.model))?;
    let Some(from) = &args.source.from else {
        bail!(
            "--from: give the log to train on (an export, an Open Bandit Dataset CSV, or a data directory)"
        );
    };
    let data_dir = &config.storage.data_dir;
    anyhow::ensure!(
        from != data_dir,
        "--from is the data directory being warm-started; train from an export or a copy"
    );
    let from_model = args.from_model.as_deref().unwrap_or(&args.model);
    let (log, source) = read(&args.source, data_dir, Some(from_model))?;
    let options = TrainOptions {
        epochs: args.epochs,
        weighting: if args.ips_weighting {
            Weighting::Ips {
                max_repeat: args.max_repeat,
            }
        } else {
            Weighting::None
        },
    };
    let trained = warm::train(&model, &log, data_dir, options)?;
    eprintln!(
        "trained model {:?} on {} examples from {source} ({} added with repetitions, {} steps); \
         checkpoint version {} written to {}",
        model.name,
        trained.examples,
        trained.added,
        trained.steps,
        trained.version,
        data_dir.display()
    );
    Ok(())
}
