//! Recovery: what the log says each model was doing when the process stopped.
//!
//! One pass over the log joins rewards and window closings to their decisions in memory:
//! a decision is open until a `Closed` record for it appears. What is open at the end is
//! restored into the pending stores; the highest version that decided keeps versions from
//! going backwards. Training examples are not collected here: each learner reads its own
//! from the log (see [`super::Tail`]) from its checkpoint's position. The same pass sums
//! the rewards of each holdout group, so that a model's group statistics cover the retained
//! log and not only the current run.

use std::{collections::HashMap, path::Path};

use super::{
    record::{DecisionRecord, How, Record},
    scan::{ScanSummary, scan},
};
use crate::{
    domain::{Example, id_hash},
    error::Error,
};

/// A decision whose window had not closed, with its reward if one had arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenDecision {
    /// The decision record's LSN.
    pub lsn: u64,
    /// The decision as logged.
    pub record: DecisionRecord,
    /// Its reward, if reported.
    pub reward: Option<f64>,
}

/// What the log holds for one model.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelLog {
    /// Open decisions, oldest first.
    pub open: Vec<OpenDecision>,
    /// The highest weights version any logged decision was made with.
    pub max_version: u64,
    /// Decisions in the retained log.
    pub decisions: u64,
    /// Rewards in the retained log.
    pub rewards: u64,
    /// Every decision in the retained log as (decided ms, id hash), oldest first: ids that
    /// new decisions may not take.
    pub used_ids: Vec<(u64, u64)>,
    /// Rewards and default rewards in the retained log by the holdout group of their
    /// decision: treatment, control. A reward whose decision is no longer in the log (cut
    /// off by retention) has no known group and is not counted here.
    pub groups: [RewardSums; 2],
}

/// Count, sum and sum of squares of a set of rewards.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RewardSums {
    /// Rewards counted.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
    /// The sum of their squares.
    pub sum_sq: f64,
}

impl RewardSums {
    /// Counts one reward.
    fn add(&mut self, reward: f64) {
        self.n += 1;
        self.sum += reward;
        self.sum_sq += reward * reward;
    }
}

/// The whole log's state per model.
#[derive(Debug, Default)]
pub struct Recovered {
    /// By model name (models no longer configured included).
    pub models: HashMap<String, ModelLog>,
    /// What the scan read and skipped.
    pub summary: ScanSummary,
}

/// Scans the log under `data_dir` (cutting a torn tail off when `repair`) and joins it.
/// `created` holds each model's creation LSN: the counts and holdout groups of a model leave
/// out decisions (and their rewards) older than it, which belong to a deleted model of the
/// same name. (Its highest version and used ids are kept: they guard the new model too.)
///
/// # Errors
/// A segment cannot be read.
pub(super) fn recover(
    data_dir: &Path,
    repair: bool,
    created: &HashMap<String, u64>,
) -> Result<Recovered, Error> {
    let created_lsn = |model: &str| created.get(model).copied().unwrap_or(0);
    // Open decisions by (model, id); closed ones are dropped as soon as their Closed record
    // is read, so memory is bounded by the pending stores' capacity.
    let mut open: HashMap<(String, String), OpenDecision> = HashMap::new();
    let mut models: HashMap<String, ModelLog> = HashMap::new();
    let summary = scan(data_dir, repair, |lsn, record| match record {
        Record::Decision(d) => {
            let model = models.entry(d.model.clone()).or_default();
            if lsn >= created_lsn(&d.model) {
                model.decisions += 1;
            }
            model.max_version = model.max_version.max(d.model_version);
            model.used_ids.push((d.decided_ms, id_hash(&d.decision_id)));
            open.insert(
                (d.model.clone(), d.decision_id.clone()),
                OpenDecision {
                    lsn,
                    record: d,
                    reward: None,
                },
            );
        }
        Record::Reward(r) => {
            let since = created_lsn(&r.model);
            let model = models.entry(r.model.clone()).or_default();
            if lsn >= since {
                model.rewards += 1;
            }
            // A reward is logged before its decision's Closed record, so the decision (and
            // its group) is still in `open` here.
            if let Some(d) = open.get_mut(&(r.model, r.decision_id)) {
                d.reward = r.example.map(|e| e.reward);
                if let Some(reward) = d.reward
                    && d.lsn >= since
                {
                    model.groups[usize::from(d.record.holdout)].add(reward);
                }
            }
        }
        Record::Closed(c) => {
            let how = c.how();
            let decision = open.remove(&(c.model.clone(), c.decision_id));
            if let (Some(d), How::Defaulted, Some(e)) = (decision, how, c.example)
                && d.lsn >= created_lsn(&c.model)
            {
                models.entry(c.model).or_default().groups[usize::from(d.record.holdout)]
                    .add(e.reward);
            }
        }
    })?;
    for ((model, _), decision) in open {
        models.entry(model).or_default().open.push(decision);
    }
    for model in models.values_mut() {
        model.open.sort_unstable_by_key(|d| d.lsn);
    }
    Ok(Recovered { models, summary })
}

/// Every training example of `model` in the log (rewards and default rewards, with their
/// LSNs), oldest first, without modifying the log: for offline tools and tests.
///
/// # Errors
/// A segment cannot be read.
pub fn examples(data_dir: &Path, model: &str) -> Result<Vec<Example>, Error> {
    let mut out = Vec::new();
    scan(data_dir, false, |lsn, record| {
        out.extend(record.example_for(model, lsn))
    })?;
    Ok(out)
}
