//! Request validation: every check a request must pass before anything happens (no counter
//! moves, no random draw, nothing stored), with messages that name the field by its wire path
//! (`candidates[2].features`), so any transport gets the same errors.

use std::collections::{HashMap, HashSet};

use crate::{
    config::{LimitsConfig, ModelConfig, ModelKind},
    error::Error,
};

use super::{ChooseArm, ReportReward};

/// The candidates of a validated `ChooseArm`, excluded arms removed.
#[derive(Debug)]
pub(super) enum Candidates<'a> {
    /// Fixed arms: ids and their output heads.
    Heads {
        ids: Vec<&'a str>,
        heads: Vec<usize>,
    },
    /// Per-arm features: the kept candidates.
    Rows { kept: Vec<&'a super::Candidate> },
}

/// A `ChooseArm` that passed every check.
#[derive(Debug)]
pub(super) struct ValidChoice<'a> {
    pub(super) candidates: Candidates<'a>,
    /// Posterior samples for the propensity estimate (the model's setting when the request
    /// gives 0).
    pub(super) propensity_samples: usize,
    /// Posterior samples for the explanation (0 = none).
    pub(super) explain_samples: usize,
}

/// Checks a `ChooseArm` against its model and the limits.
pub(super) fn choose<'a>(
    config: &'a ModelConfig,
    heads: &HashMap<String, usize>,
    limits: &LimitsConfig,
    req: &'a ChooseArm,
) -> Result<ValidChoice<'a>, Error> {
    check_vector(
        "context",
        &req.context,
        config.context_dim,
        limits.max_abs_value,
    )?;
    if req.candidates.len() > limits.max_candidates {
        return Err(Error::invalid(
            "candidates",
            format!(
                "{} candidates is more than the limit of {}",
                req.candidates.len(),
                limits.max_candidates
            ),
        ));
    }
    let propensity_samples =
        match check_samples(limits, "propensity_samples", req.propensity_samples)? {
            0 => config.policy.propensity_samples,
            n => n,
        };
    let explain_samples = check_samples(limits, "explain_samples", req.explain_samples)?;
    let excluded: HashSet<&str> = req.excluded_arm_ids.iter().map(String::as_str).collect();
    let candidates = match config.kind {
        ModelKind::FixedArms if req.candidates.is_empty() => {
            // Every configured arm, in head order: the heads are their positions, with no
            // lookup by name (the usual request).
            check_excluded(config, heads, req)?;
            let (ids, heads): (Vec<&str>, Vec<usize>) = config
                .arms
                .iter()
                .enumerate()
                .filter(|(_, id)| !excluded.contains(id.as_str()))
                .map(|(head, id)| (id.as_str(), head))
                .unzip();
            if ids.is_empty() {
                return Err(every_candidate_excluded());
            }
            Candidates::Heads { ids, heads }
        }
        ModelKind::FixedArms => {
            let ids = fixed_candidates(config, heads, req, &excluded)?;
            let heads = ids.iter().map(|id| heads[*id]).collect();
            Candidates::Heads { ids, heads }
        }
        ModelKind::PerArmFeatures => Candidates::Rows {
            kept: per_arm_candidates(config, limits, req, &excluded)?,
        },
    };
    Ok(ValidChoice {
        candidates,
        propensity_samples,
        explain_samples,
    })
}

/// Checks a `ReportReward`'s values.
pub(super) fn reward(limits: &LimitsConfig, req: &ReportReward) -> Result<(), Error> {
    check_id(limits, "decision_id", &req.decision_id, false)?;
    if !req.reward.is_finite() {
        return Err(Error::invalid(
            "reward",
            format!("{} is not finite", req.reward),
        ));
    }
    if req.reward.abs() > limits.max_abs_reward {
        return Err(Error::invalid(
            "reward",
            format!(
                "{:e} is beyond limits.max_abs_reward ({:e})",
                req.reward, limits.max_abs_reward
            ),
        ));
    }
    if let Some(regret) = req.regret
        && !(regret.is_finite() && regret >= 0.0)
    {
        return Err(Error::invalid(
            "regret",
            format!("{regret} is not a finite non-negative number"),
        ));
    }
    Ok(())
}

/// A requested number of posterior samples, at most `limits.max_posterior_samples`.
fn check_samples(limits: &LimitsConfig, field: &str, value: u32) -> Result<usize, Error> {
    let value = usize::try_from(value).unwrap_or(usize::MAX);
    if value > limits.max_posterior_samples {
        return Err(Error::invalid(
            field,
            format!(
                "{value} samples is more than the limit of {}",
                limits.max_posterior_samples
            ),
        ));
    }
    Ok(value)
}

/// The candidate arm ids of a fixed-arm request, minus the excluded ones.
fn fixed_candidates<'a>(
    config: &'a ModelConfig,
    heads: &HashMap<String, usize>,
    req: &'a ChooseArm,
    excluded: &HashSet<&str>,
) -> Result<Vec<&'a str>, Error> {
    check_excluded(config, heads, req)?;
    let all: Vec<&str> = if req.candidates.is_empty() {
        config.arms.iter().map(String::as_str).collect()
    } else {
        let mut seen = HashSet::new();
        for (i, c) in req.candidates.iter().enumerate() {
            if !heads.contains_key(&c.id) {
                return Err(Error::invalid(
                    format!("candidates[{i}].id"),
                    format!("unknown arm {:?} for model {:?}", c.id, config.name),
                ));
            }
            if !c.features.is_empty() {
                return Err(Error::invalid(
                    format!("candidates[{i}].features"),
                    format!(
                        "model {:?} has fixed arms and takes no arm features",
                        config.name
                    ),
                ));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(Error::invalid(
                    format!("candidates[{i}].id"),
                    format!("duplicate arm id {:?}", c.id),
                ));
            }
        }
        req.candidates.iter().map(|c| c.id.as_str()).collect()
    };
    without_excluded(all, excluded, |id| id)
}

/// A fixed-arm request may only exclude arms the model has.
fn check_excluded(
    config: &ModelConfig,
    heads: &HashMap<String, usize>,
    req: &ChooseArm,
) -> Result<(), Error> {
    for (i, id) in req.excluded_arm_ids.iter().enumerate() {
        if !heads.contains_key(id) {
            return Err(Error::invalid(
                format!("excluded_arm_ids[{i}]"),
                format!("unknown arm {id:?} for model {:?}", config.name),
            ));
        }
    }
    Ok(())
}

/// The error when exclusions leave no candidate.
fn every_candidate_excluded() -> Error {
    Error::invalid("excluded_arm_ids", "every candidate is excluded")
}

/// The candidates of a per-arm request, checked, minus the excluded ones.
fn per_arm_candidates<'a>(
    config: &ModelConfig,
    limits: &LimitsConfig,
    req: &'a ChooseArm,
    excluded: &HashSet<&str>,
) -> Result<Vec<&'a super::Candidate>, Error> {
    if req.candidates.is_empty() {
        return Err(Error::invalid(
            "candidates",
            format!(
                "model {:?} scores per-arm features and needs at least one candidate",
                config.name
            ),
        ));
    }
    let mut seen = HashSet::new();
    for (i, c) in req.candidates.iter().enumerate() {
        check_id(limits, &format!("candidates[{i}].id"), &c.id, false)?;
        if !seen.insert(c.id.as_str()) {
            return Err(Error::invalid(
                format!("candidates[{i}].id"),
                format!("duplicate arm id {:?}", c.id),
            ));
        }
        check_vector(
            &format!("candidates[{i}].features"),
            &c.features,
            config.arm_feature_dim,
            limits.max_abs_value,
        )?;
    }
    without_excluded(req.candidates.iter().collect(), excluded, |c| c.id.as_str())
}

/// `all` minus the excluded ids; at least one must be left.
fn without_excluded<T>(
    all: Vec<T>,
    excluded: &HashSet<&str>,
    id: impl Fn(&T) -> &str,
) -> Result<Vec<T>, Error> {
    let kept: Vec<T> = all
        .into_iter()
        .filter(|c| !excluded.contains(id(c)))
        .collect();
    if kept.is_empty() {
        return Err(every_candidate_excluded());
    }
    Ok(kept)
}

/// An id must be at most `max_id_bytes` long, and non-empty unless `may_be_empty`.
pub(super) fn check_id(
    limits: &LimitsConfig,
    field: &str,
    id: &str,
    may_be_empty: bool,
) -> Result<(), Error> {
    if id.is_empty() && !may_be_empty {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.len() > limits.max_id_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "{} bytes is longer than the limit of {}",
                id.len(),
                limits.max_id_bytes
            ),
        ));
    }
    Ok(())
}

/// `values` must have `dim` finite values of magnitude at most `max_abs`.
fn check_vector(field: &str, values: &[f32], dim: usize, max_abs: f32) -> Result<(), Error> {
    if values.len() != dim {
        return Err(Error::invalid(
            field,
            format!("expected {dim} values, got {}", values.len()),
        ));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            format!("{v} is not finite"),
        ));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.abs() > max_abs) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            format!("{v:e} is beyond limits.max_abs_value ({max_abs:e})"),
        ));
    }
    Ok(())
}

/// A fingerprint of what a `ChooseArm` asks (context, candidates, exclusions), so that a
/// retry with the same decision id but a different request is recognised. FNV-1a 64.
pub(super) fn request_hash(req: &ChooseArm) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for v in &req.context {
        eat(&v.to_bits().to_le_bytes());
    }
    eat(&[0xff]);
    for c in &req.candidates {
        eat(c.id.as_bytes());
        eat(&[0xfe]);
        for v in &c.features {
            eat(&v.to_bits().to_le_bytes());
        }
        eat(&[0xfd]);
    }
    eat(&[0xff]);
    for id in &req.excluded_arm_ids {
        eat(id.as_bytes());
        eat(&[0xfc]);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector checks name the field and the index of the bad value.
    #[test]
    fn vector_messages() {
        assert_eq!(
            check_vector("context", &[1.0], 2, 1e6)
                .unwrap_err()
                .to_string(),
            "context: expected 2 values, got 1"
        );
        assert_eq!(
            check_vector("context", &[1.0, f32::NAN], 2, 1e6)
                .unwrap_err()
                .to_string(),
            "context[1]: NaN is not finite"
        );
        assert_eq!(
            check_vector("candidates[0].features", &[f32::INFINITY], 1, 1e6)
                .unwrap_err()
                .to_string(),
            "candidates[0].features[0]: inf is not finite"
        );
        assert_eq!(
            check_vector("context", &[1.0, -1e30], 2, 1e6)
                .unwrap_err()
                .to_string(),
            "context[1]: -1e30 is beyond limits.max_abs_value (1e6)"
        );
        assert!(check_vector("context", &[1e6, -1e6], 2, 1e6).is_ok());
    }

    /// The fingerprint changes with any part of the request and not with the id.
    #[test]
    fn request_hash_sees_every_part() {
        let base = ChooseArm {
            model: "m".into(),
            context: vec![1.0, 2.0],
            candidates: vec![super::super::Candidate {
                id: "a".into(),
                features: vec![0.5],
            }],
            excluded_arm_ids: vec!["b".into()],
            decision_id: "x".into(),
            ..ChooseArm::default()
        };
        let h = request_hash(&base);
        let mut other = base.clone();
        other.decision_id = "y".into();
        assert_eq!(request_hash(&other), h);
        let mut other = base.clone();
        other.context[1] = 2.5;
        assert_ne!(request_hash(&other), h);
        let mut other = base.clone();
        other.candidates[0].features[0] = 0.25;
        assert_ne!(request_hash(&other), h);
        let mut other = base.clone();
        other.excluded_arm_ids.clear();
        assert_ne!(request_hash(&other), h);
    }
}
