//! Recovery: what the log says each model was doing when the process stopped.
//!
//! One pass over the log joins rewards and window closings to their decisions in memory:
//! a decision is open until a `Closed` record for it appears. What is open at the end is
//! restored into the pending stores; the highest version that decided keeps versions from
//! going backwards. Training examples are not collected here: each learner reads its own
//! from the log (see [`super::Tail`]) from its checkpoint's position.

use std::{collections::HashMap, path::Path};

use super::{
    record::{DecisionRecord, Record},
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
///
/// # Errors
/// A segment cannot be read.
pub(super) fn recover(data_dir: &Path, repair: bool) -> Result<Recovered, Error> {
    // Open decisions by (model, id); closed ones are dropped as soon as their Closed record
    // is read, so memory is bounded by the pending stores' capacity.
    let mut open: HashMap<(String, String), OpenDecision> = HashMap::new();
    let mut models: HashMap<String, ModelLog> = HashMap::new();
    let summary = scan(data_dir, repair, |lsn, record| match record {
        Record::Decision(d) => {
            let model = models.entry(d.model.clone()).or_default();
            model.decisions += 1;
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
            models.entry(r.model.clone()).or_default().rewards += 1;
            if let Some(d) = open.get_mut(&(r.model, r.decision_id)) {
                d.reward = r.example.map(|e| e.reward);
            }
        }
        Record::Closed(c) => {
            open.remove(&(c.model, c.decision_id));
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
