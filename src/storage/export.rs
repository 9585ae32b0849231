//! `banditd export`: every logged decision joined with its reward and how its window ended,
//! as one JSON object per line. Reads the segments only, so it works on the data directory of
//! a running server too (it sees what was committed when it reached each segment).

use std::{collections::HashMap, io::Write, path::Path};

use serde::{Deserialize, Serialize};

use super::{
    record::{DecisionRecord, How, Record},
    scan::{ScanSummary, scan},
};
use crate::error::Error;

/// A candidate as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedCandidate {
    /// Arm id.
    pub id: String,
    /// Its features (empty for fixed-arm models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<f32>,
}

/// How a decision's wait for its reward ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// The window closed after a reward arrived.
    Rewarded,
    /// The window closed without a reward; the default reward was trained on.
    Defaulted,
    /// The window closed without a reward and there was no default.
    Dropped,
    /// Evicted from a full pending store.
    Evicted,
}

impl Closed {
    fn from_how(how: How) -> Option<Self> {
        match how {
            How::Rewarded => Some(Self::Rewarded),
            How::Defaulted => Some(Self::Defaulted),
            How::Dropped => Some(Self::Dropped),
            How::Evicted => Some(Self::Evicted),
            How::Unspecified => None,
        }
    }
}

/// One logged decision (and its reward once known): a line of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRow {
    /// The model.
    pub model: String,
    /// The decision id.
    pub decision_id: String,
    /// When it was decided, ms since the Unix epoch.
    pub decided_ms: u64,
    /// The request's context.
    pub context: Vec<f32>,
    /// The scored candidates (excluded ones are not listed).
    pub candidates: Vec<LoggedCandidate>,
    /// The chosen arm.
    pub arm_id: String,
    /// Each scored candidate's sampled expected reward, in candidate order.
    pub scores: Vec<f64>,
    /// The weights version that decided.
    pub model_version: u64,
    /// The network input trained on when the reward arrives.
    pub input: Vec<f32>,
    /// The output head trained.
    pub head: u32,
    /// The probability the policy had of choosing `arm_id`, when it was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
    /// The reward, once reported (or the default reward, if it closed as `defaulted`).
    pub reward: Option<f64>,
    /// When the reward was reported, ms since the Unix epoch.
    pub reward_ms: Option<u64>,
    /// The regret reported with the reward, if any.
    pub regret: Option<f64>,
    /// How the wait ended; `None` while pending.
    pub closed: Option<Closed>,
    /// True when the decision fell in the model's holdout control group and was served by
    /// the control policy (its `propensity` is the control's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub holdout: bool,
}

impl DecisionRow {
    /// The row of a logged decision, before its reward.
    pub fn from_record(d: DecisionRecord) -> Self {
        let chosen = d.chosen as usize;
        let chosen_candidate = d.candidates.get(chosen);
        let arm_id = chosen_candidate.map(|c| c.id.clone()).unwrap_or_default();
        let mut input = d.context.clone();
        if let Some(c) = chosen_candidate {
            input.extend_from_slice(&c.features);
        }
        Self {
            model: d.model,
            decision_id: d.decision_id,
            decided_ms: d.decided_ms,
            context: d.context,
            candidates: d
                .candidates
                .into_iter()
                .map(|c| LoggedCandidate {
                    id: c.id,
                    features: c.features,
                })
                .collect(),
            arm_id,
            scores: d.scores,
            model_version: d.model_version,
            input,
            head: d.head,
            propensity: d.propensity,
            reward: None,
            reward_ms: None,
            regret: None,
            closed: None,
            holdout: d.holdout,
        }
    }
}

/// Writes every logged decision of the `models` (all models when empty) to `out` as JSON
/// lines: a decision's line is written when its window closes, in log order, and the still
/// open ones at the end. Returns the rows written per model and what the scan read.
///
/// # Errors
/// A segment cannot be read, or `out` fails.
pub fn export(
    data_dir: &Path,
    models: &[String],
    out: &mut impl Write,
) -> Result<(HashMap<String, u64>, ScanSummary), Error> {
    let wanted = |m: &str| models.is_empty() || models.iter().any(|w| w == m);
    // Open decisions with their LSN, so that those still open at the end come out in log
    // order (a map's order would differ from run to run for equal times).
    let mut open: HashMap<(String, String), (u64, DecisionRow)> = HashMap::new();
    let mut rows: HashMap<String, u64> = HashMap::new();
    let mut failed: Option<std::io::Error> = None;
    let mut emit = |row: &DecisionRow, out: &mut dyn Write| {
        if failed.is_some() {
            return;
        }
        let line = serde_json::to_vec(row).map_err(std::io::Error::other);
        if let Err(e) = line.and_then(|l| out.write_all(&l).and_then(|()| out.write_all(b"\n"))) {
            failed = Some(e);
        } else {
            *rows.entry(row.model.clone()).or_default() += 1;
        }
    };
    let summary = scan(data_dir, false, |lsn, record| {
        if !wanted(record.model()) {
            return;
        }
        match record {
            Record::Decision(d) => {
                open.insert(
                    (d.model.clone(), d.decision_id.clone()),
                    (lsn, DecisionRow::from_record(d)),
                );
            }
            Record::Reward(r) => {
                if let Some((_, row)) = open.get_mut(&(r.model, r.decision_id)) {
                    row.reward = r.example.map(|e| e.reward);
                    row.reward_ms = Some(r.at_ms);
                    row.regret = r.regret;
                }
            }
            Record::Closed(c) => {
                let how = c.how();
                if let Some((_, mut row)) = open.remove(&(c.model, c.decision_id)) {
                    row.closed = Closed::from_how(how);
                    if let Some(e) = c.example {
                        row.reward = Some(e.reward);
                        row.reward_ms = Some(c.at_ms);
                    }
                    emit(&row, out);
                }
            }
        }
    })?;
    let mut rest: Vec<(u64, DecisionRow)> = open.into_values().collect();
    rest.sort_unstable_by_key(|(lsn, _)| *lsn);
    for (_, row) in &rest {
        emit(row, out);
    }
    if let Some(e) = failed {
        return Err(Error::Internal(format!("cannot write the export: {e}")));
    }
    Ok((rows, summary))
}

/// Every logged decision of the `models` (all when empty) as rows in memory, in the order
/// [`export`] writes them: for offline tools and tests on logs that fit in memory.
///
/// # Errors
/// A segment cannot be read.
pub fn rows(data_dir: &Path, models: &[String]) -> Result<Vec<DecisionRow>, Error> {
    let mut out = Vec::new();
    export(data_dir, models, &mut out)?;
    String::from_utf8_lossy(&out)
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .map_err(|e| Error::Internal(format!("export produced a bad line: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::StorageConfig,
        storage::{Candidate, Storage},
    };

    /// Decisions still open at the end come out in log order, even when they share a
    /// decision time (a map's order would vary between runs), with their holdout flag.
    #[test]
    fn open_decisions_come_out_in_log_order_with_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageConfig {
            data_dir: dir.path().to_owned(),
            ..StorageConfig::default()
        })
        .unwrap();
        let (log, mut writer) = storage.start_writer(0).unwrap();
        let ids: Vec<String> = (0..40).rev().map(|i| format!("d{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            log.decision(DecisionRecord {
                model: "m".into(),
                decision_id: id.clone(),
                decided_ms: 1_000,
                context: vec![0.5],
                candidates: vec![Candidate {
                    id: "a".into(),
                    features: Vec::new(),
                }],
                chosen: 0,
                scores: vec![0.0],
                model_version: 1,
                head: 0,
                propensity: None,
                request_hash: 0,
                holdout: i % 2 == 1,
            })
            .unwrap();
        }
        log.flush().unwrap().blocking_recv().unwrap().unwrap();
        log.shutdown();
        writer.shutdown();
        let rows = rows(dir.path(), &[]).unwrap();
        let got: Vec<&str> = rows.iter().map(|r| r.decision_id.as_str()).collect();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
        let groups: Vec<bool> = rows.iter().map(|r| r.holdout).collect();
        assert_eq!(groups, (0..40).map(|i| i % 2 == 1).collect::<Vec<_>>());
    }
}
