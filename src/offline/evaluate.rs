//! `banditd evaluate`: the logging policy's actual mean reward beside IPS, SNIPS and DR
//! estimates of what each candidate policy would have earned on the same traffic.

use serde::Serialize;

use super::{
    estimate::{self, Estimate, Estimates},
    logs::{Log, MissingShare},
    replay::{self, RewardModel},
};
use crate::{config::ModelConfig, error::Error};

/// What to do with logged decisions that have no propensity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissingPropensity {
    /// Refuse the log, naming the first such decision (the default: an imputed propensity
    /// is a guess, and every estimate inherits it).
    #[default]
    Refuse,
    /// Impute `1 / n` for `n` candidates: right only if the logging policy chose uniformly
    /// at random; otherwise the estimates are biased.
    Uniform,
}

/// A candidate policy: a label and what gives its probabilities.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// How it is shown.
    pub label: String,
    /// Where its probabilities come from.
    pub policy: CandidatePolicy,
}

/// Where a candidate's probabilities come from.
#[derive(Debug, Clone)]
pub enum CandidatePolicy {
    /// A model configuration replayed over the log, learning as it goes.
    Replayed(Box<ModelConfig>),
    /// Probabilities computed elsewhere: one row per rewarded decision in [`Log`] order, one
    /// probability per candidate.
    Given(Vec<Vec<f64>>),
}

/// Reads given probabilities (`probabilities:PATH`): one JSON array per line.
fn read_probabilities(path: &str) -> Result<Vec<Vec<f64>>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("candidate probabilities:{path}"), e.to_string()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::invalid(
                    format!("{path}: line {}", i + 1),
                    format!("not a JSON array of numbers: {e}"),
                )
            })
        })
        .collect()
}

/// Splits on whitespace outside brackets and quotes (`a=[1, 2] b="x y"` is two tokens).
fn tokens(spec: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted) = (0i32, false);
    for ch in spec.chars() {
        match ch {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            c if c.is_whitespace() && depth <= 0 && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses a candidate: `POLICY [KEY=VALUE ...]` (a policy name, then settings as
/// `banditd-loadgen inproc --set` takes them, applied to the logging model's configuration),
/// `model:NAME [KEY=VALUE ...]` (another model of the configuration, which must take the
/// same inputs and arms) or `probabilities:PATH` (a policy computed elsewhere: one JSON
/// array of probabilities per line, one line per rewarded decision).
///
/// # Errors
/// An unknown policy or model, a setting that does not apply, or a model of another shape.
pub fn parse_candidate(
    spec: &str,
    base: &ModelConfig,
    others: &[ModelConfig],
) -> Result<Candidate, Error> {
    let words = tokens(spec);
    let Some((head, settings)) = words.split_first() else {
        return Err(Error::invalid("candidate", "empty: give a policy name"));
    };
    let bad = |detail: String| Error::invalid(format!("candidate {spec:?}"), detail);
    if let Some(path) = spec.trim().strip_prefix("probabilities:") {
        return Ok(Candidate {
            label: spec.trim().to_owned(),
            policy: CandidatePolicy::Given(read_probabilities(path)?),
        });
    }
    let model = if let Some(name) = head.strip_prefix("model:") {
        let other = others
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| bad(format!("no model {name:?} in the configuration")))?;
        let mut m = other
            .with_settings(settings)
            .map_err(|e| bad(e.to_string()))?;
        if m.kind != base.kind
            || m.context_dim != base.context_dim
            || m.arm_feature_dim != base.arm_feature_dim
            || m.arms != base.arms
        {
            return Err(bad(format!(
                "model {name:?} takes other inputs or arms than the logged model {:?}",
                base.name
            )));
        }
        m.name = base.name.clone();
        m
    } else {
        let mut all = vec![format!("policy={head}")];
        all.extend(settings.iter().cloned());
        base.with_settings(&all).map_err(|e| bad(e.to_string()))?
    };
    Ok(Candidate {
        label: spec.trim().to_owned(),
        policy: CandidatePolicy::Replayed(Box::new(model)),
    })
}

/// Options of an evaluation.
#[derive(Debug, Clone)]
pub struct Options {
    /// Posterior draws per propensity of a Thompson policy.
    pub propensity_samples: usize,
    /// Missing logging propensities.
    pub missing: MissingPropensity,
    /// DR's reward model.
    pub reward_model: RewardModel,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            // The server's bound on a propensity's standard error: 100 draws give ±5 points.
            propensity_samples: 100,
            missing: MissingPropensity::Refuse,
            reward_model: RewardModel::Network,
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    /// The candidate as given.
    pub label: String,
    /// Its estimates.
    pub estimates: Estimates,
}

/// An evaluation's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the log came from.
    pub source: String,
    /// The logged model (banditd logs).
    pub model: Option<String>,
    /// Decisions with a reward, evaluated on.
    pub decisions: usize,
    /// Decisions without a reward, left out.
    pub unrewarded: usize,
    /// Decisions without a logged propensity, and what was done about them.
    pub missing_propensity: MissingShare,
    /// See `missing_propensity`.
    pub missing_handling: MissingPropensity,
    /// The logged policy's actual mean reward.
    pub logged: Estimate,
    /// DR's reward model: `network`, `arm_mean` or `given`.
    pub reward_model: &'static str,
    /// One row per candidate.
    pub policies: Vec<PolicyRow>,
}

/// The logging propensity of every decision, imputed or refused as `missing` says.
///
/// # Errors
/// A decision has no propensity and `missing` is `Refuse`: names it and the share missing.
pub fn logging_propensities(log: &Log, missing: MissingPropensity) -> Result<Vec<f64>, Error> {
    let share = log.missing_propensities();
    log.decisions
        .iter()
        .map(|d| match (d.propensity, missing) {
            (Some(p), _) => Ok(p),
            (None, MissingPropensity::Uniform) => Ok(1.0 / d.candidates.len() as f64),
            (None, MissingPropensity::Refuse) => Err(Error::invalid(
                format!("{}: propensity", d.at),
                format!(
                    "missing ({} of {} decisions have none). Log propensities (the model's \
                     `propensity_samples`, or a baseline policy), or impute 1/n with \
                     --missing-propensity uniform if the logging policy chose uniformly",
                    share.missing, share.total
                ),
            )),
        })
        .collect()
}

/// Evaluates `candidates` on `log`, whose decisions were made by `model`'s arms and inputs.
///
/// # Errors
/// The log is empty, refused (missing propensities), does not fit the model, or replay
/// fails.
pub fn evaluate(
    log: &Log,
    source: &str,
    model: &ModelConfig,
    candidates: &[Candidate],
    options: &Options,
) -> Result<Report, Error> {
    if log.decisions.is_empty() {
        return Err(Error::invalid(
            "log",
            format!("no decision with a reward ({} without one)", log.unrewarded),
        ));
    }
    let logging = logging_propensities(log, options.missing)?;
    let prepared = replay::prepare(model, log)?;
    let predicted = replay::predictions(model, log, &prepared, &options.reward_model)?;
    let mut policies = Vec::with_capacity(candidates.len());
    for c in candidates {
        let target = match &c.policy {
            CandidatePolicy::Replayed(model) => {
                replay::replay(model, &prepared, options.propensity_samples)?
            }
            CandidatePolicy::Given(rows) => check_given(log, &c.label, rows)?,
        };
        let rounds: Vec<estimate::Round> = log
            .decisions
            .iter()
            .zip(&logging)
            .zip(target)
            .zip(&predicted)
            .map(|(((d, &mu), target), predicted)| estimate::Round {
                reward: d.reward,
                logging: mu,
                target,
                predicted: predicted.clone(),
                chosen: d.chosen,
            })
            .collect();
        policies.push(PolicyRow {
            label: c.label.clone(),
            estimates: estimate::estimate(&rounds),
        });
    }
    let rewards: Vec<f64> = log.decisions.iter().map(|d| d.reward).collect();
    Ok(Report {
        source: source.to_owned(),
        model: log.model.clone(),
        decisions: log.decisions.len(),
        unrewarded: log.unrewarded,
        missing_propensity: log.missing_propensities(),
        missing_handling: options.missing,
        logged: Estimate::mean_of(&rewards),
        reward_model: match options.reward_model {
            RewardModel::Network => "network",
            RewardModel::ArmMean => "arm_mean",
            RewardModel::Given(_) => "given",
        },
        policies,
    })
}

/// Checks given probabilities against the log: a row per decision, a probability per
/// candidate, each in [0, 1], summing to 1.
fn check_given(log: &Log, label: &str, rows: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, Error> {
    if rows.len() != log.decisions.len() {
        return Err(Error::invalid(
            format!("candidate {label:?}"),
            format!(
                "{} rows for {} rewarded decisions",
                rows.len(),
                log.decisions.len()
            ),
        ));
    }
    for (i, (row, d)) in rows.iter().zip(&log.decisions).enumerate() {
        let field = format!("candidate {label:?}: row {} ({})", i + 1, d.at);
        if row.len() != d.candidates.len() {
            return Err(Error::invalid(
                field,
                format!(
                    "{} probabilities for {} candidates",
                    row.len(),
                    d.candidates.len()
                ),
            ));
        }
        let sum: f64 = row.iter().sum();
        if row.iter().any(|p| !(0.0..=1.0).contains(p)) || (sum - 1.0).abs() > 1e-6 {
            return Err(Error::invalid(
                field,
                format!("not a probability distribution (sum {sum})"),
            ));
        }
    }
    Ok(rows.to_vec())
}

/// The report as a plain-text table.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = report.missing_propensity;
    let _ = writeln!(
        s,
        "{}{}: {} decisions with a reward ({} without, left out); propensity missing in {} \
         ({:.1} %{}); DR reward model: {}",
        report.source,
        report
            .model
            .as_ref()
            .map(|m| format!(" (model {m})"))
            .unwrap_or_default(),
        report.decisions,
        report.unrewarded,
        m.missing,
        100.0 * m.missing as f64 / m.total.max(1) as f64,
        if m.missing > 0 { ", imputed 1/n" } else { "" },
        report.reward_model,
    );
    // Four decimals, or four significant digits for rewards below 1 (click rates).
    let scale = report.logged.value.abs().max(report.logged.high.abs());
    let d = if scale > 0.0 && scale < 1.0 {
        (3.0 - scale.log10().floor()).min(12.0) as usize
    } else {
        4
    };
    let ci = |e: &Estimate| format!("{:.d$} [{:.d$}, {:.d$}]", e.value, e.low, e.high);
    let _ = writeln!(
        s,
        "{:<32} {:>30} {:>30} {:>30} {:>9} {:>7}",
        "policy", "IPS [95% CI]", "SNIPS [95% CI]", "DR [95% CI]", "ESS", "mean w"
    );
    let _ = writeln!(
        s,
        "{:<32} {:>30} {:>30} {:>30} {:>9} {:>7}",
        "logged (actual mean reward)",
        ci(&report.logged),
        "",
        "",
        report.decisions,
        ""
    );
    for p in &report.policies {
        let e = &p.estimates;
        let _ = writeln!(
            s,
            "{:<32} {:>30} {:>30} {:>30} {:>9.1} {:>7.3}",
            p.label,
            ci(&e.ips),
            ci(&e.snips),
            ci(&e.dr),
            e.effective_sample_size,
            e.mean_weight
        );
    }
    let low: Vec<&str> = report
        .policies
        .iter()
        .filter(|p| p.estimates.effective_sample_size < 0.1 * report.decisions as f64)
        .map(|p| p.label.as_str())
        .collect();
    let off: Vec<&str> = report
        .policies
        .iter()
        .filter(|p| p.estimates.rounds >= 100 && !(0.8..=1.25).contains(&p.estimates.mean_weight))
        .map(|p| p.label.as_str())
        .collect();
    if !off.is_empty() {
        let _ = writeln!(
            s,
            "warning: mean importance weight far from 1 (its expectation) for {off:?}: \
             either chance (see ESS) or logged propensities that do not match the logging \
             policy where these policies go (a Thompson policy's sampled propensity of a rare \
             choice is at least 1/(samples + 1), too high): IPS and DR are then biased, low \
             when the mean weight is below 1; SNIPS divides by it"
        );
    }
    if !low.is_empty() {
        let _ = writeln!(
            s,
            "warning: effective sample size below 10 % of the decisions for {low:?}: a few \
             decisions carry the estimate and its interval is too narrow to trust"
        );
    }
    s
}
