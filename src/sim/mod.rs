//! Seeded simulated bandit environments, for the load generator and for tests.
//!
//! Every environment implements [`Environment`]: each call to
//! [`Environment::next_round`] yields a [`Round`] holding the context, the candidates
//! offered, the *expected* reward of every candidate (what an oracle knows) and one
//! *sampled* reward of every candidate (what the service would observe, whichever it
//! picks). Knowing the expected rewards of all candidates lets a caller measure regret
//! exactly: [`Round::regret_of`] for the candidate a policy chose, and
//! [`Round::uniform_regret`] for the baseline of choosing uniformly at random. Every
//! environment is driven by a [`Xoshiro256PlusPlus`](rand_xoshiro::Xoshiro256PlusPlus)
//! generator seeded from a `u64`: the same seed always yields the same sequence of rounds.
//!
//! The environments:
//!
//! * [`WheelBandit`]: the wheel bandit of Riquelme, Tucker & Snoek, "Deep Bayesian
//!   Bandits Showdown" (ICLR 2018), as in their reference code. The context is a point
//!   drawn uniformly from the unit disc in R²; there are five fixed arms `"0"`..`"4"`.
//!   Each arm pays N(μ, 0.05²) with μ = 1.0 for arms 0–3 and 1.2 for arm 4, so arm 4 is
//!   best inside the circle of radius δ. Outside it (‖x‖ ≥ δ), the arm of x's quadrant
//!   pays N(50, 0.01²) instead. The larger δ, the rarer and harder to find the big payoffs.
//! * [`Classification`]: a supervised data set (CSV with a header row, numeric feature
//!   columns and one label column) turned into a bandit in the usual way: the context is a
//!   row's standardized features, there is one fixed arm per class, and the reward is 1
//!   for the row's true class and 0 for any other. Rows are visited in a seeded random
//!   order; after the last row a new pass starts, in a fresh order.
//! * [`PerArmLogistic`]: a per-arm (recommendation-like) environment. A catalogue of
//!   items with feature vectors; each round offers a random subset of them, and each
//!   candidate pays Bernoulli(sigmoid(contextᵀ W item)) for a hidden matrix W.
//! * [`Drifting`]: wraps any environment and, after a given number of rounds, rotates the
//!   rewards across the candidates so that the best arm changes — a test of how fast a
//!   policy notices non-stationarity.
//!
//! [`from_spec`] builds any of them from a short string, for command lines.

mod classification;
mod drift;
mod noisy;
mod per_arm;
mod wheel;

use std::path::Path;

pub use classification::{Classification, LabelColumn};
pub use drift::Drifting;
pub use noisy::Noisy;
pub use per_arm::PerArmLogistic;
pub use wheel::WheelBandit;

/// One candidate offered in a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The candidate's id: a fixed arm id (`"0"`, `"setosa"`) or a catalogue item id
    /// (`"item-17"`).
    pub id: String,
    /// The candidate's own features; empty for fixed-arm environments.
    pub features: Vec<f32>,
}

/// Everything an environment yields for one decision.
///
/// `candidates`, `expected` and `rewards` have the same length and are indexed alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The shared context features (length [`Environment::context_dim`]).
    pub context: Vec<f32>,
    /// The candidates offered in this round.
    pub candidates: Vec<Candidate>,
    /// The expected reward of each candidate given the context (the oracle's knowledge).
    pub expected: Vec<f64>,
    /// One sampled reward of each candidate: what would be observed if it were chosen.
    pub rewards: Vec<f64>,
}

impl Round {
    /// The highest expected reward in the round (negative infinity if there are no
    /// candidates).
    pub fn max_expected(&self) -> f64 {
        self.expected
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// The index of the candidate with the highest expected reward: the oracle's choice.
    /// The first such candidate on ties; 0 for a round with no candidates.
    pub fn best_index(&self) -> usize {
        let mut best = 0;
        for (i, &value) in self.expected.iter().enumerate() {
            if value > self.expected[best] {
                best = i;
            }
        }
        best
    }

    /// The expected regret of choosing candidate `index`: the best expected reward minus
    /// that candidate's expected reward (0 for the oracle's choice, never negative).
    ///
    /// # Panics
    ///
    /// Panics if `index` is not a valid candidate index, like slice indexing.
    pub fn regret_of(&self, index: usize) -> f64 {
        self.max_expected() - self.expected[index]
    }

    /// The expected regret of choosing a candidate uniformly at random: the mean of
    /// [`regret_of`](Self::regret_of) over all candidates (0 for a round with no
    /// candidates).
    pub fn uniform_regret(&self) -> f64 {
        if self.expected.is_empty() {
            return 0.0;
        }
        let max = self.max_expected();
        let total: f64 = self.expected.iter().map(|&e| max - e).sum();
        total / self.expected.len() as f64
    }
}

/// A simulated bandit environment: an endless, seeded source of [`Round`]s.
pub trait Environment: Send {
    /// A short human-readable description, e.g. `"wheel(delta=0.95)"`.
    fn name(&self) -> String;

    /// The length of [`Round::context`].
    fn context_dim(&self) -> usize;

    /// The length of each [`Candidate::features`]; 0 for fixed-arm environments.
    fn arm_feature_dim(&self) -> usize;

    /// The fixed arm ids, in candidate order (`"0"`..`"4"` for the wheel); empty for
    /// per-arm environments, whose candidates change every round.
    fn arm_ids(&self) -> Vec<String>;

    /// Draws the next round.
    fn next_round(&mut self) -> Round;
}

impl<E: Environment + ?Sized> Environment for Box<E> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn context_dim(&self) -> usize {
        (**self).context_dim()
    }

    fn arm_feature_dim(&self) -> usize {
        (**self).arm_feature_dim()
    }

    fn arm_ids(&self) -> Vec<String> {
        (**self).arm_ids()
    }

    fn next_round(&mut self) -> Round {
        (**self).next_round()
    }
}

/// Errors from building an environment: invalid arguments, unreadable or malformed data
/// files, and unknown spec strings. Line numbers are 1-based and count the header row.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A constructor argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A data file could not be opened or read.
    #[error("cannot read {path}: {source}", path = path.display())]
    Io {
        /// The file concerned.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The CSV reader failed (for instance on invalid UTF-8).
    #[error("CSV error{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Csv {
        /// The line where the error occurred, when known.
        line: Option<u64>,
        /// What went wrong.
        message: String,
    },

    /// The CSV input has no header row at all.
    #[error("CSV input is empty: expected a header row followed by data rows")]
    EmptyInput,

    /// The CSV input has a header row but no data rows.
    #[error("CSV input has a header row but no data rows")]
    NoRows,

    /// A row has a different number of fields than the header.
    #[error("line {line}: expected {expected} fields (as in the header row), found {found}")]
    FieldCount {
        /// The offending line.
        line: u64,
        /// The number of fields in the header.
        expected: usize,
        /// The number of fields in this row.
        found: usize,
    },

    /// A feature cell is not a finite number.
    #[error("line {line}: column `{column}` must be numeric, found {value:?}")]
    NonNumeric {
        /// The offending line.
        line: u64,
        /// The name of the column.
        column: String,
        /// The cell's content.
        value: String,
    },

    /// A row's label cell is empty.
    #[error("line {line}: the label column `{column}` is empty")]
    EmptyLabel {
        /// The offending line.
        line: u64,
        /// The name of the label column.
        column: String,
    },

    /// The requested label column does not exist.
    #[error("unknown label column {label}; the columns are: {}", columns.join(", "))]
    UnknownLabel {
        /// The label column as requested (a quoted name or an index).
        label: String,
        /// The columns of the header row.
        columns: Vec<String>,
    },

    /// The label column is the only column.
    #[error("no feature columns: the only column is the label column `{label}`")]
    NoFeatures {
        /// The name of the label column.
        label: String,
    },

    /// The label column has fewer than two distinct values.
    #[error("label column `{column}` has {found} distinct class(es); at least 2 are needed")]
    TooFewClasses {
        /// The name of the label column.
        column: String,
        /// The number of distinct labels found.
        found: usize,
    },

    /// An environment spec string could not be parsed.
    #[error("invalid environment spec {spec:?}: {reason}; accepted forms: {SPEC_FORMS}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The spec forms accepted by [`from_spec`], for error and help messages.
pub const SPEC_FORMS: &str = "\"wheel\" (delta 0.5), \"wheel:DELTA\", \
     \"csv:PATH\" (label = last column), \"csv:PATH:LABEL\" (label column name or \
     0-based index), \"per-arm\" (context 8, arm 8, catalogue 100, candidates 10), \
     \"per-arm:CONTEXT,ARM,CATALOGUE,CANDIDATES\", and any of these prefixed by \
     \"drift@N:\" (e.g. \"drift@2500:wheel:0.5\") or by \"noise@ARM,SIGMA:\" (arm ARM's \
     rewards get N(0, SIGMA²) added, e.g. \"noise@0,10:wheel:0.5\")";

/// Builds an environment from a short spec string, seeded with `seed`.
///
/// The accepted forms:
///
/// * `wheel` — [`WheelBandit`] with δ = 0.5; `wheel:DELTA` — with the given δ.
/// * `csv:PATH` — [`Classification`] of the CSV file at `PATH`, the label being the last
///   column; `csv:PATH:LABEL` — the label column given by name, or by 0-based index if
///   `LABEL` parses as an integer. If the whole of `PATH:LABEL` names an existing file, it
///   is taken as a path (so paths containing `:` still work with the first form).
/// * `per-arm` — [`PerArmLogistic`] with context dimension 8, arm dimension 8, a catalogue
///   of 100 items and 10 candidates per round; `per-arm:CONTEXT,ARM,CATALOGUE,CANDIDATES`
///   — with the given sizes.
/// * `drift@N:SPEC` — any of the above wrapped in [`Drifting`], drifting after `N` rounds.
/// * `noise@ARM,SIGMA:SPEC` — any of the above wrapped in [`Noisy`]: the candidate with id
///   `ARM` gets `N(0, SIGMA²)` added to its sampled rewards (its expected reward unchanged).
///
/// # Errors
///
/// [`SimError::Spec`] for a spec that matches no form (the message lists the accepted
/// forms), and the environment's own error for invalid arguments or an unreadable file.
pub fn from_spec(spec: &str, seed: u64) -> Result<Box<dyn Environment>, SimError> {
    let spec_error = |reason: String| SimError::Spec {
        spec: spec.to_owned(),
        reason,
    };
    let trimmed = spec.trim();

    if let Some(rest) = trimmed.strip_prefix("drift@") {
        let Some((count, inner)) = rest.split_once(':') else {
            return Err(spec_error(
                "\"drift@N:\" must be followed by another spec".to_owned(),
            ));
        };
        let at_round: u64 = count.trim().parse().map_err(|_| {
            spec_error(format!(
                "the drift round {count:?} is not a non-negative integer"
            ))
        })?;
        if inner.trim().is_empty() {
            return Err(spec_error(
                "\"drift@N:\" must be followed by another spec".to_owned(),
            ));
        }
        let inner = from_spec(inner, seed)?;
        return Ok(Box::new(Drifting::new(inner, at_round)));
    }

    if let Some(rest) = trimmed.strip_prefix("noise@") {
        let usage =
            || spec_error("\"noise@ARM,SIGMA:\" must be followed by another spec".to_owned());
        let (args, inner) = rest.split_once(':').ok_or_else(usage)?;
        let (arm, sigma) = args.split_once(',').ok_or_else(usage)?;
        let sigma: f64 = sigma
            .trim()
            .parse()
            .map_err(|_| spec_error(format!("the noise sigma {sigma:?} is not a number")))?;
        if inner.trim().is_empty() || arm.trim().is_empty() {
            return Err(usage());
        }
        let inner = from_spec(inner, seed)?;
        return Ok(Box::new(Noisy::new(inner, arm.trim(), sigma, seed)?));
    }

    let (kind, args) = match trimmed.split_once(':') {
        Some((kind, args)) => (kind, Some(args)),
        None => (trimmed, None),
    };
    match (kind, args) {
        ("wheel", None) => Ok(Box::new(WheelBandit::new(0.5, seed)?)),
        ("wheel", Some(delta)) => {
            let delta: f64 = delta
                .trim()
                .parse()
                .map_err(|_| spec_error(format!("the wheel delta {delta:?} is not a number")))?;
            Ok(Box::new(WheelBandit::new(delta, seed)?))
        }
        ("csv", None) => Err(spec_error("\"csv\" needs a path: \"csv:PATH\"".to_owned())),
        ("csv", Some(rest)) => {
            let (path, label) = split_csv_args(rest);
            if path.is_empty() {
                return Err(spec_error("\"csv:\" needs a path".to_owned()));
            }
            let label = match label {
                Some(label) if label.trim().is_empty() => {
                    return Err(spec_error("the label column is empty".to_owned()));
                }
                Some(label) => LabelColumn::parse(label.trim()),
                None => LabelColumn::Last,
            };
            Ok(Box::new(Classification::from_path(path, label, seed)?))
        }
        ("per-arm", None) => Ok(Box::new(PerArmLogistic::new(8, 8, 100, 10, seed)?)),
        ("per-arm", Some(sizes)) => {
            let parsed: Result<Vec<usize>, _> = sizes
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect();
            match parsed.as_deref() {
                Ok(&[context, arm, catalogue, candidates]) => Ok(Box::new(PerArmLogistic::new(
                    context, arm, catalogue, candidates, seed,
                )?)),
                _ => Err(spec_error(format!(
                    "\"per-arm:\" needs four non-negative integers \
                     CONTEXT,ARM,CATALOGUE,CANDIDATES, found {sizes:?}"
                ))),
            }
        }
        _ => Err(spec_error(format!("unknown environment {kind:?}"))),
    }
}

/// Splits the argument of `csv:` into a path and an optional label column: the whole
/// argument if it names an existing file, otherwise at the last `:`.
fn split_csv_args(rest: &str) -> (&str, Option<&str>) {
    if Path::new(rest).is_file() {
        return (rest, None);
    }
    match rest.rsplit_once(':') {
        Some((path, label)) => (path, Some(label)),
        None => (rest, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(expected: Vec<f64>) -> Round {
        let candidates = (0..expected.len())
            .map(|i| Candidate {
                id: i.to_string(),
                features: Vec::new(),
            })
            .collect();
        Round {
            context: vec![0.0],
            candidates,
            rewards: expected.clone(),
            expected,
        }
    }

    #[test]
    fn best_index_is_first_argmax() {
        assert_eq!(round(vec![1.0, 3.0, 2.0, 3.0]).best_index(), 1);
        assert_eq!(round(vec![5.0, 5.0]).best_index(), 0);
        assert_eq!(round(vec![-2.0, -1.0]).best_index(), 1);
        assert_eq!(round(vec![]).best_index(), 0);
    }

    #[test]
    fn regret_and_uniform_regret() {
        let r = round(vec![1.0, 3.0, 2.0, 0.5]);
        assert_eq!(r.regret_of(r.best_index()), 0.0);
        assert_eq!(r.regret_of(0), 2.0);
        assert_eq!(r.regret_of(3), 2.5);
        let mean = (0..4).map(|i| r.regret_of(i)).sum::<f64>() / 4.0;
        assert!((r.uniform_regret() - mean).abs() < 1e-12);
        assert_eq!(round(vec![]).uniform_regret(), 0.0);
    }

    #[test]
    fn uniform_and_oracle_regret_on_every_environment() {
        let mut envs: Vec<Box<dyn Environment>> = vec![
            from_spec("wheel:0.7", 1).unwrap(),
            from_spec("per-arm:3,4,30,6", 2).unwrap(),
            from_spec("drift@5:wheel", 3).unwrap(),
        ];
        for env in &mut envs {
            for _ in 0..50 {
                let r = env.next_round();
                let n = r.candidates.len();
                assert_eq!(r.expected.len(), n);
                assert_eq!(r.rewards.len(), n);
                assert_eq!(r.context.len(), env.context_dim());
                assert!(r.regret_of(r.best_index()).abs() < 1e-12);
                let mean = (0..n).map(|i| r.regret_of(i)).sum::<f64>() / n as f64;
                assert!((r.uniform_regret() - mean).abs() < 1e-9);
                assert!(r.uniform_regret() >= 0.0);
            }
        }
    }

    fn write_temp_csv(name: &str, contents: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("banditd-sim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    const IRIS_LIKE: &str = "a,b,c,species\n\
                             1,2,3,x\n\
                             2,3,4,y\n\
                             3,1,5,x\n\
                             4,0,6,z\n";

    #[test]
    fn from_spec_accepts_every_form() {
        let path = write_temp_csv("spec.csv", IRIS_LIKE);
        let p = path.display();

        let env = from_spec("wheel", 1).unwrap();
        assert_eq!(env.name(), "wheel(delta=0.5)");
        let env = from_spec("wheel:0.95", 1).unwrap();
        assert_eq!(env.name(), "wheel(delta=0.95)");
        assert_eq!(env.arm_ids(), ["0", "1", "2", "3", "4"]);

        // The last column is the label by default.
        let env = from_spec(&format!("csv:{p}"), 1).unwrap();
        assert_eq!(env.arm_ids(), ["x", "y", "z"]);
        assert_eq!(env.context_dim(), 3);
        let env = from_spec(&format!("csv:{p}:species"), 1).unwrap();
        assert_eq!(env.arm_ids(), ["x", "y", "z"]);
        let env = from_spec(&format!("csv:{p}:3"), 1).unwrap();
        assert_eq!(env.arm_ids(), ["x", "y", "z"]);

        let mut env = from_spec("per-arm", 1).unwrap();
        assert_eq!((env.context_dim(), env.arm_feature_dim()), (8, 8));
        let r = env.next_round();
        assert_eq!(r.candidates.len(), 10);
        let mut env = from_spec("per-arm:3,5,40,7", 1).unwrap();
        assert_eq!((env.context_dim(), env.arm_feature_dim()), (3, 5));
        assert_eq!(env.next_round().candidates.len(), 7);

        let env = from_spec("drift@2500:wheel:0.5", 1).unwrap();
        assert_eq!(env.name(), "drift(wheel(delta=0.5)@2500)");
        let env = from_spec("drift@10:wheel", 1).unwrap();
        assert_eq!(env.name(), "drift(wheel(delta=0.5)@10)");
        let env = from_spec(&format!("drift@3:csv:{p}:species"), 1).unwrap();
        assert_eq!(env.arm_ids(), ["x", "y", "z"]);
        let env = from_spec("drift@0:per-arm:2,2,5,5", 1).unwrap();
        assert_eq!(env.arm_feature_dim(), 2);
        assert!(env.name().starts_with("drift(per-arm("));

        let env = from_spec("noise@0,10:wheel:0.7", 1).unwrap();
        assert_eq!(env.name(), "noise(wheel(delta=0.7)@0=10)");
        for bad in [
            "noise@0:wheel",
            "noise@0,x:wheel",
            "noise@0,1:",
            "noise@0,-1:wheel",
        ] {
            assert!(from_spec(bad, 1).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn from_spec_is_seeded() {
        let mut a = from_spec("drift@3:per-arm:3,3,20,4", 9).unwrap();
        let mut b = from_spec("drift@3:per-arm:3,3,20,4", 9).unwrap();
        for _ in 0..10 {
            assert_eq!(a.next_round(), b.next_round());
        }
    }

    #[test]
    fn from_spec_rejects_junk() {
        let path = write_temp_csv("junk.csv", IRIS_LIKE);
        let p = path.display();
        for spec in [
            "",
            "foo",
            "wheels",
            "wheel:",
            "wheel:abc",
            "wheel:1.5",
            "wheel:0",
            "csv",
            "csv:",
            "csv:/nonexistent/banditd/data.csv",
            &format!("csv:{p}:nosuchcolumn"),
            &format!("csv:{p}:9"),
            &format!("csv:{p}:a"), // species becomes a (non-numeric) feature
            &format!("csv:{p}:"),
            "per-arm:",
            "per-arm:1,2,3",
            "per-arm:1,2,3,4,5",
            "per-arm:a,b,c,d",
            "per-arm:4,4,5,6",
            "per-arm:0,4,5,2",
            "drift@",
            "drift@5",
            "drift@5:",
            "drift@x:wheel",
            "drift@-1:wheel",
            "drift@5:junk",
        ] {
            assert!(from_spec(spec, 0).is_err(), "{spec:?} should be rejected");
        }
        let message = from_spec("foo", 0).err().unwrap().to_string();
        assert!(message.contains("\"foo\""), "{message}");
        assert!(message.contains("wheel:DELTA"), "{message}");
        assert!(message.contains("drift@N:"), "{message}");
        let message = from_spec("csv:/nonexistent/banditd/data.csv", 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            message.contains("/nonexistent/banditd/data.csv"),
            "{message}"
        );
    }
}
