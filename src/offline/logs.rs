//! Reading logged decisions back for offline evaluation and warm start: banditd's own data
//! directory (through [`storage::rows`]), its JSON-lines export, and the Open Bandit
//! Dataset's CSV layout. Every reader returns the same [`LoggedDecision`]s, in decision order, and
//! refuses bad input with an error naming the line (or decision) and the field.

use std::{collections::BTreeMap, io::BufRead, path::Path};

use serde::Serialize;

use crate::storage::{self, DecisionRow, LoggedCandidate};

/// A bad log: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{source_name}: {at}: {field}: {detail}")]
pub struct LogError {
    /// The file or data directory.
    pub source_name: String,
    /// `line N` (files) or `decision ID` (a data directory), or `header`.
    pub at: String,
    /// The offending field.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

/// One logged decision that has a reward.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedDecision {
    /// Where it was read: `line N` or `decision ID`.
    pub at: String,
    /// The context.
    pub context: Vec<f32>,
    /// The candidates offered, in order.
    pub candidates: Vec<LoggedCandidate>,
    /// The chosen candidate's position in `candidates`.
    pub chosen: usize,
    /// The logging policy's probability of the choice, when it was logged.
    pub propensity: Option<f64>,
    /// The reward.
    pub reward: f64,
}

/// A log read into memory.
#[derive(Debug, Clone, Default)]
pub struct Log {
    /// The decisions with a reward, in decision order.
    pub decisions: Vec<LoggedDecision>,
    /// Decisions read without a reward (still pending, or closed without one): not used.
    pub unrewarded: usize,
    /// The model the decisions belong to (banditd logs).
    pub model: Option<String>,
    /// Fixed-arm ids in a stable order (the Open Bandit layout: items `0..n`), when known.
    pub arms: Vec<String>,
}

/// How much of a log has no logging propensity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MissingShare {
    /// Decisions without a propensity.
    pub missing: usize,
    /// Decisions in the log.
    pub total: usize,
}

impl Log {
    /// How many decisions lack a logged propensity.
    pub fn missing_propensities(&self) -> MissingShare {
        MissingShare {
            missing: self
                .decisions
                .iter()
                .filter(|d| d.propensity.is_none())
                .count(),
            total: self.decisions.len(),
        }
    }
}

fn error(source: &str, at: &str, field: &str, detail: impl Into<String>) -> LogError {
    LogError {
        source_name: source.to_owned(),
        at: at.to_owned(),
        field: field.to_owned(),
        detail: detail.into(),
    }
}

/// Checks a logged propensity: absent is allowed (counted), but present must be in (0, 1].
fn check_propensity(source: &str, at: &str, field: &str, p: f64) -> Result<f64, LogError> {
    if p.is_finite() && p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(error(
            source,
            at,
            field,
            format!("{p} is not a probability in (0, 1] (a zero propensity cannot be reweighted)"),
        ))
    }
}

/// A banditd row as a logged decision; `None` when it has no reward.
fn from_row(
    source: &str,
    at: String,
    row: DecisionRow,
) -> Result<Option<LoggedDecision>, LogError> {
    let Some(reward) = row.reward else {
        return Ok(None);
    };
    if !reward.is_finite() {
        return Err(error(
            source,
            &at,
            "reward",
            format!("{reward} is not finite"),
        ));
    }
    let chosen = row
        .candidates
        .iter()
        .position(|c| c.id == row.arm_id)
        .ok_or_else(|| {
            error(
                source,
                &at,
                "arm_id",
                format!("{:?} is not among the decision's candidates", row.arm_id),
            )
        })?;
    let propensity = row
        .propensity
        .map(|p| check_propensity(source, &at, "propensity", p))
        .transpose()?;
    Ok(Some(LoggedDecision {
        at,
        context: row.context,
        candidates: row.candidates,
        chosen,
        propensity,
        reward,
    }))
}

/// Keeps one model's rows: `model` if given, else the only model in the rows.
fn one_model(source: &str, rows: &[DecisionRow], model: Option<&str>) -> Result<String, LogError> {
    let mut names: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    match (model, names.as_slice()) {
        (Some(m), _) if names.contains(&m) => Ok(m.to_owned()),
        (Some(m), _) => Err(error(
            source,
            "log",
            "model",
            format!("no decisions of model {m:?} (models in the log: {names:?})"),
        )),
        (None, [only]) => Ok((*only).to_owned()),
        (None, []) => Err(error(source, "log", "model", "the log holds no decisions")),
        (None, _) => Err(error(
            source,
            "log",
            "model",
            format!("the log holds several models {names:?}: name one (--model)"),
        )),
    }
}

/// The rows of `model` (or the only model) as logged decisions, in decision order.
///
/// An export lists decisions as their windows close, then the open ones; replay wants them
/// as they were decided. They are sorted by decision time, ties broken by decision id: the
/// export does not carry log positions, and decisions in the same millisecond would
/// otherwise come in an order that can differ between two exports of the same log.
fn from_rows(
    source: &str,
    mut rows: Vec<(String, DecisionRow)>,
    model: Option<&str>,
) -> Result<Log, LogError> {
    rows.sort_by(|(_, a), (_, b)| {
        (a.decided_ms, &a.decision_id).cmp(&(b.decided_ms, &b.decision_id))
    });
    let plain: Vec<DecisionRow> = rows.iter().map(|(_, r)| r.clone()).collect();
    let model = one_model(source, &plain, model)?;
    let mut log = Log {
        model: Some(model.clone()),
        ..Log::default()
    };
    for (at, row) in rows {
        if row.model != model {
            continue;
        }
        match from_row(source, at, row)? {
            Some(d) => log.decisions.push(d),
            None => log.unrewarded += 1,
        }
    }
    Ok(log)
}

/// The decisions of `model` (or of the only model) in the data directory `dir` of a stopped
/// server or a copy of one.
///
/// # Errors
/// The log cannot be read, has no such model (or several and none named), or a decision is
/// malformed (chosen arm not among its candidates, a propensity outside (0, 1]).
pub fn read_data_dir(dir: &Path, model: Option<&str>) -> Result<Log, LogError> {
    let source = dir.display().to_string();
    let models: Vec<String> = model.map(|m| vec![m.to_owned()]).unwrap_or_default();
    let rows = storage::rows(dir, &models)
        .map_err(|e| error(&source, "log", "segments", e.to_string()))?;
    let rows = rows
        .into_iter()
        .map(|r| (format!("decision {}", r.decision_id), r))
        .collect();
    from_rows(&source, rows, model)
}

/// The decisions in a `banditd export` file (JSON lines).
///
/// # Errors
/// The file cannot be read, a line is not a decision (a truncated last line included), or
/// a decision is malformed as for [`read_data_dir`].
pub fn read_export(path: &Path, model: Option<&str>) -> Result<Log, LogError> {
    let source = path.display().to_string();
    let file =
        std::fs::File::open(path).map_err(|e| error(&source, "file", "open", e.to_string()))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = format!("line {}", i + 1);
        let line = line.map_err(|e| error(&source, &at, "read", e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: DecisionRow = serde_json::from_str(&line).map_err(|e| {
            let detail = if e.is_eof() {
                format!("the line ends early (a truncated file?): {e}")
            } else {
                e.to_string()
            };
            error(&source, &at, "json", detail)
        })?;
        rows.push((at, row));
    }
    from_rows(&source, rows, model)
}

/// The Open Bandit Dataset's columns that are not context.
const OBD_ITEM: &str = "item_id";
const OBD_POSITION: &str = "position";
const OBD_CLICK: &str = "click";
const OBD_PROPENSITY: &str = "propensity_score";
/// Columns read and ignored: the pandas index (an empty header) and the timestamp.
const OBD_IGNORED: [&str; 2] = ["", "timestamp"];

/// Options of the Open Bandit Dataset reader.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObdOptions {
    /// Number of items (actions); default: the highest `item_id` + 1.
    pub items: Option<usize>,
    /// Keep only rows at this position (as written in the file); default: every row.
    pub position: Option<i64>,
}

/// The decisions in an Open Bandit Dataset CSV (`{behavior_policy}/{campaign}.csv`: an
/// index column, `timestamp`, `item_id`, `position`, `click`, `propensity_score`, then
/// context columns such as `user_feature_*` and `user-item_affinity_*`).
///
/// Every row is one decision among all items (candidates `"0"`..`"n-1"`, fixed arms); the
/// context is every other column: numeric ones as they are, and a column holding any
/// non-numeric value one-hot encoded over its values in sorted order (as pandas'
/// `get_dummies`, which the Open Bandit Pipeline applies to `user_feature_*`).
///
/// # Errors
/// The file cannot be read, a required column is missing, a row has the wrong number of
/// fields, or a value is not a number where one is needed (item id, click, propensity in
/// (0, 1], an item id not below `items`).
pub fn read_obd(path: &Path, options: ObdOptions) -> Result<Log, LogError> {
    let source = path.display().to_string();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .map_err(|e| error(&source, "file", "open", e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| error(&source, "header", "csv", e.to_string()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let col = |name: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            error(
                &source,
                "header",
                name,
                format!("missing column (columns: {header:?})"),
            )
        })
    };
    let (item_col, position_col, click_col, prop_col) = (
        col(OBD_ITEM)?,
        col(OBD_POSITION)?,
        col(OBD_CLICK)?,
        col(OBD_PROPENSITY)?,
    );
    let context_cols: Vec<usize> = (0..header.len())
        .filter(|&i| {
            ![item_col, position_col, click_col, prop_col].contains(&i)
                && !OBD_IGNORED.contains(&header[i].as_str())
        })
        .collect();
    // First pass: the raw rows, and which context columns are categorical.
    let mut raw: Vec<(String, csv::StringRecord)> = Vec::new();
    let mut categories: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        // Line numbers count the header as line 1.
        let at = format!("line {}", i + 2);
        let record = record.map_err(|e| error(&source, &at, "csv", e.to_string()))?;
        if record.len() != header.len() {
            return Err(error(
                &source,
                &at,
                "fields",
                format!(
                    "{} fields, the header has {} (a truncated file or wrong columns?)",
                    record.len(),
                    header.len()
                ),
            ));
        }
        for &c in &context_cols {
            if record[c].trim().parse::<f64>().is_err() {
                categories.entry(c).or_default().push(record[c].to_owned());
            }
        }
        raw.push((at, record));
    }
    for values in categories.values_mut() {
        values.sort();
        values.dedup();
    }
    // A categorical column's numeric-looking values are categories too.
    for (_, record) in &raw {
        for (&c, values) in categories.iter_mut() {
            if values.binary_search(&record[c].to_owned()).is_err() {
                let v = record[c].to_owned();
                let at = values.partition_point(|x| *x < v);
                values.insert(at, v);
            }
        }
    }
    let number = |at: &str, record: &csv::StringRecord, c: usize| -> Result<f64, LogError> {
        let text = record[c].trim();
        text.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| error(&source, at, &header[c], format!("{text:?} is not a number")))
    };
    let mut items = options.items.unwrap_or(0);
    let mut parsed = Vec::with_capacity(raw.len());
    for (at, record) in &raw {
        let item = number(at, record, item_col)?;
        if item < 0.0 || item.fract() != 0.0 {
            return Err(error(
                &source,
                at,
                OBD_ITEM,
                format!("{item} is not an item index (a whole number from 0)"),
            ));
        }
        let item = item as usize;
        match options.items {
            Some(n) if item >= n => {
                return Err(error(
                    &source,
                    at,
                    OBD_ITEM,
                    format!("item {item} is not below the number of items {n}"),
                ));
            }
            Some(_) => {}
            None => items = items.max(item + 1),
        }
        let position = number(at, record, position_col)?;
        if options.position.is_some_and(|p| position != p as f64) {
            continue;
        }
        let reward = number(at, record, click_col)?;
        let p = number(at, record, prop_col)?;
        let propensity = check_propensity(&source, at, OBD_PROPENSITY, p)?;
        let mut context = Vec::new();
        for &c in &context_cols {
            match categories.get(&c) {
                Some(values) => context.extend(
                    values
                        .iter()
                        .map(|v| if *v == record[c] { 1.0 } else { 0.0 }),
                ),
                None => context.push(number(at, record, c)? as f32),
            }
        }
        parsed.push((at.clone(), context, item, propensity, reward));
    }
    let arms: Vec<String> = (0..items).map(|i| i.to_string()).collect();
    let candidates: Vec<LoggedCandidate> = arms
        .iter()
        .map(|id| LoggedCandidate {
            id: id.clone(),
            features: Vec::new(),
        })
        .collect();
    Ok(Log {
        decisions: parsed
            .into_iter()
            .map(|(at, context, item, propensity, reward)| LoggedDecision {
                at,
                context,
                candidates: candidates.clone(),
                chosen: item,
                propensity: Some(propensity),
                reward,
            })
            .collect(),
        unrewarded: 0,
        model: None,
        arms,
    })
}
