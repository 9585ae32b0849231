//! A classification data set (CSV) turned into a fixed-arm bandit.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Candidate, Environment, Round, SimError};

/// Which CSV column holds the class label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelColumn {
    /// The column with this header name (the first one, if several share it).
    Name(String),
    /// The column at this 0-based index.
    Index(usize),
    /// The last column.
    Last,
}

impl LabelColumn {
    /// Parses a command-line label: a 0-based index if it parses as an integer, a column
    /// name otherwise.
    pub fn parse(label: &str) -> Self {
        match label.parse() {
            Ok(index) => Self::Index(index),
            Err(_) => Self::Name(label.to_owned()),
        }
    }
}

impl std::fmt::Display for LabelColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(name) => write!(f, "`{name}`"),
            Self::Index(index) => write!(f, "#{index}"),
            Self::Last => f.write_str("(last)"),
        }
    }
}

/// A classification data set as a contextual bandit: one fixed arm per class, reward 1
/// for the row's true class and 0 for the others (the sampled reward equals the expected
/// one).
///
/// The input is CSV with a header row, numeric feature columns and one label column. The
/// label may be any string; the classes are its distinct values, sorted (numerically if
/// every label is a number, as strings otherwise), and the arm ids are the labels
/// themselves. Surrounding whitespace of every cell is ignored and blank lines are
/// skipped. Each feature column is standardized to mean 0 and standard deviation 1 over
/// the whole file (a constant column becomes 0).
///
/// Rows are visited in a random order drawn from the seed. After the last row of a pass
/// a new pass starts, in a fresh random order, so every row is seen exactly once per pass
/// and the environment never runs out.
#[derive(Debug, Clone)]
pub struct Classification {
    name: String,
    feature_names: Vec<String>,
    classes: Vec<String>,
    features: Vec<Vec<f32>>,
    labels: Vec<usize>,
    order: Vec<usize>,
    position: usize,
    passes: u64,
    rng: Xoshiro256PlusPlus,
}

impl Classification {
    /// Loads the CSV file at `path`.
    ///
    /// # Errors
    ///
    /// [`SimError::Io`] if the file cannot be read, otherwise as
    /// [`from_reader`](Self::from_reader).
    pub fn from_path(
        path: impl AsRef<Path>,
        label: LabelColumn,
        seed: u64,
    ) -> Result<Self, SimError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| SimError::Io {
            path: path.to_owned(),
            source,
        })?;
        let source = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Self::load(&bytes, label, seed, &source)
    }

    /// Loads CSV from `reader` (read to the end, into memory: the rows are kept anyway).
    ///
    /// # Errors
    ///
    /// [`SimError::EmptyInput`] without a header row, [`SimError::NoRows`] without data
    /// rows, [`SimError::UnknownLabel`] for a label column not in the header,
    /// [`SimError::NoFeatures`] if the label is the only column,
    /// [`SimError::FieldCount`] for a row whose number of fields differs from the
    /// header's, [`SimError::NonNumeric`] for a feature cell that is not a finite number,
    /// [`SimError::EmptyLabel`] for an empty label cell, [`SimError::TooFewClasses`] for
    /// fewer than two distinct labels, and [`SimError::Csv`] for unreadable input (such
    /// as invalid UTF-8). Row errors carry the 1-based line number (the header is line 1).
    pub fn from_reader(
        mut reader: impl Read,
        label: LabelColumn,
        seed: u64,
    ) -> Result<Self, SimError> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| SimError::Csv {
            line: None,
            message: format!("I/O error: {e}"),
        })?;
        Self::load(&bytes, label, seed, "reader")
    }

    fn load(bytes: &[u8], label: LabelColumn, seed: u64, source: &str) -> Result<Self, SimError> {
        let mut csv = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes);
        // The csv crate's own line count skips blank lines: count them from the bytes.
        let csv_error = |error: csv::Error| {
            let line = error.position().map(|p| line_at(bytes, p.byte()));
            let message = match error.kind() {
                csv::ErrorKind::Utf8 { err, .. } => {
                    format!("invalid UTF-8 in field {}", err.field() + 1)
                }
                _ => error.to_string(),
            };
            SimError::Csv { line, message }
        };
        let columns: Vec<String> = csv
            .headers()
            .map_err(csv_error)?
            .iter()
            .map(str::to_owned)
            .collect();
        if columns.is_empty() {
            return Err(SimError::EmptyInput);
        }
        let label_index = match &label {
            LabelColumn::Name(name) => columns.iter().position(|c| c == name),
            LabelColumn::Index(index) => (*index < columns.len()).then_some(*index),
            LabelColumn::Last => Some(columns.len() - 1),
        };
        let Some(label_index) = label_index else {
            return Err(SimError::UnknownLabel {
                label: label.to_string(),
                columns,
            });
        };
        let label_name = columns[label_index].clone();
        if columns.len() < 2 {
            return Err(SimError::NoFeatures { label: label_name });
        }
        let feature_names: Vec<String> = columns
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != label_index)
            .map(|(_, c)| c.clone())
            .collect();

        let mut raw: Vec<Vec<f64>> = Vec::new();
        let mut raw_labels: Vec<String> = Vec::new();
        let mut record = csv::StringRecord::new();
        while csv.read_record(&mut record).map_err(csv_error)? {
            let line = || record.position().map_or(0, |p| line_at(bytes, p.byte()));
            if record.len() != columns.len() {
                return Err(SimError::FieldCount {
                    line: line(),
                    expected: columns.len(),
                    found: record.len(),
                });
            }
            let mut row = Vec::with_capacity(feature_names.len());
            for (i, cell) in record.iter().enumerate() {
                if i == label_index {
                    continue;
                }
                match cell.parse::<f64>() {
                    Ok(value) if value.is_finite() => row.push(value),
                    _ => {
                        return Err(SimError::NonNumeric {
                            line: line(),
                            column: columns[i].clone(),
                            value: cell.to_owned(),
                        });
                    }
                }
            }
            let label_value = &record[label_index];
            if label_value.is_empty() {
                return Err(SimError::EmptyLabel {
                    line: line(),
                    column: label_name,
                });
            }
            raw.push(row);
            raw_labels.push(label_value.to_owned());
        }
        if raw.is_empty() {
            return Err(SimError::NoRows);
        }

        let classes = sorted_classes(&raw_labels);
        if classes.len() < 2 {
            return Err(SimError::TooFewClasses {
                column: label_name,
                found: classes.len(),
            });
        }
        let labels = raw_labels
            .iter()
            .map(|l| classes.iter().position(|c| c == l).unwrap_or_default())
            .collect();
        let features = standardize(&raw, feature_names.len());

        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..features.len()).collect();
        order.shuffle(&mut rng);
        Ok(Self {
            name: format!("csv({source}, label={label_name})"),
            feature_names,
            classes,
            features,
            labels,
            order,
            position: 0,
            passes: 0,
            rng,
        })
    }

    /// The number of data rows.
    pub fn rows(&self) -> usize {
        self.features.len()
    }

    /// The class labels, in arm order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The names of the feature columns, in context order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// The number of passes over the data completed so far.
    pub fn passes(&self) -> u64 {
        self.passes
    }
}

/// The distinct labels, sorted numerically if all are numbers, as strings otherwise.
fn sorted_classes(labels: &[String]) -> Vec<String> {
    let distinct: BTreeSet<&str> = labels.iter().map(String::as_str).collect();
    let mut classes: Vec<String> = distinct.into_iter().map(str::to_owned).collect();
    let numeric: Option<Vec<f64>> = classes.iter().map(|c| c.parse::<f64>().ok()).collect();
    if let Some(values) = numeric {
        let mut pairs: Vec<(f64, String)> = values.into_iter().zip(classes).collect();
        pairs.sort_by(|a, b| {
            a.0.partial_cmp(&b.0)
                .unwrap_or(Ordering::Equal)
                .then_with(|| a.1.cmp(&b.1))
        });
        classes = pairs.into_iter().map(|(_, c)| c).collect();
    }
    classes
}

/// Z-scores every column (population standard deviation); constant columns become 0.
fn standardize(raw: &[Vec<f64>], dim: usize) -> Vec<Vec<f32>> {
    let n = raw.len() as f64;
    let mut mean = vec![0.0; dim];
    for row in raw {
        for (m, x) in mean.iter_mut().zip(row) {
            *m += x / n;
        }
    }
    let mut std = vec![0.0; dim];
    for row in raw {
        for ((s, x), m) in std.iter_mut().zip(row).zip(&mean) {
            *s += (x - m) * (x - m) / n;
        }
    }
    for (s, m) in std.iter_mut().zip(&mean) {
        *s = s.sqrt();
        // Treat a spread at rounding-error level as a constant column.
        if *s <= 1e-12 * m.abs().max(1.0) {
            *s = 0.0;
        }
    }
    raw.iter()
        .map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&std)
                .map(|((x, m), s)| if *s > 0.0 { ((x - m) / s) as f32 } else { 0.0 })
                .collect()
        })
        .collect()
}

/// The 1-based line number of the record whose position is byte `offset` of `bytes` (a
/// `\r\n`, `\n` or lone `\r` ends a line, as for the CSV reader). The reader places a
/// record after the previous one's terminator, before any blank lines it skipped, so
/// those are skipped here too.
fn line_at(bytes: &[u8], offset: u64) -> u64 {
    let mut start = usize::try_from(offset).map_or(bytes.len(), |o| o.min(bytes.len()));
    while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
        start += 1;
    }
    let breaks = bytes[..start]
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    breaks as u64 + 1
}

impl Environment for Classification {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn context_dim(&self) -> usize {
        self.feature_names.len()
    }

    fn arm_feature_dim(&self) -> usize {
        0
    }

    fn arm_ids(&self) -> Vec<String> {
        self.classes.clone()
    }

    fn next_round(&mut self) -> Round {
        if self.position >= self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.position = 0;
            self.passes += 1;
        }
        let row = self.order[self.position];
        self.position += 1;
        let label = self.labels[row];
        let expected: Vec<f64> = (0..self.classes.len())
            .map(|c| if c == label { 1.0 } else { 0.0 })
            .collect();
        Round {
            context: self.features[row].clone(),
            candidates: self
                .classes
                .iter()
                .map(|id| Candidate {
                    id: id.clone(),
                    features: Vec::new(),
                })
                .collect(),
            rewards: expected.clone(),
            expected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sepal,petal,species,width\n\
                        5.1,1.4,setosa,0.2\n\
                        7.0,4.7,versicolor,1.4\n\
                        \n\
                        6.3,6.0,virginica,2.5\n\
                        4.9, 1.5 ,setosa,0.2\n\
                        6.4,4.5,versicolor,1.5\n";

    fn load(text: &str, label: LabelColumn) -> Result<Classification, SimError> {
        Classification::from_reader(text.as_bytes(), label, 5)
    }

    fn error(text: &str, label: LabelColumn) -> String {
        load(text, label)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn loads_a_good_file() {
        let env = load(GOOD, LabelColumn::Name("species".into())).unwrap();
        assert_eq!(env.rows(), 5);
        assert_eq!(env.classes(), ["setosa", "versicolor", "virginica"]);
        assert_eq!(env.arm_ids(), ["setosa", "versicolor", "virginica"]);
        assert_eq!(env.feature_names(), ["sepal", "petal", "width"]);
        assert_eq!(env.context_dim(), 3);
        assert_eq!(env.arm_feature_dim(), 0);
        assert_eq!(env.name(), "csv(reader, label=species)");

        let by_index = load(GOOD, LabelColumn::Index(2)).unwrap();
        assert_eq!(by_index.classes(), env.classes());
        let last = load("a,b,label\n1,2,x\n3,4,y\n", LabelColumn::Last).unwrap();
        assert_eq!(last.classes(), ["x", "y"]);
        assert_eq!(last.feature_names(), ["a", "b"]);
    }

    #[test]
    fn rounds_are_one_hot_on_the_true_class() {
        let mut env = load(GOOD, LabelColumn::Name("species".into())).unwrap();
        for _ in 0..12 {
            let r = env.next_round();
            assert_eq!(r.candidates.len(), 3);
            assert_eq!(r.expected, r.rewards);
            assert_eq!(r.expected.iter().sum::<f64>(), 1.0);
            assert!(r.expected.iter().all(|&e| e == 0.0 || e == 1.0));
            assert_eq!(r.regret_of(r.best_index()), 0.0);
            assert!((r.uniform_regret() - 2.0 / 3.0).abs() < 1e-12);
        }
    }

    #[test]
    fn standardizes_features() {
        let text = "x,y,c,label\n1,10,7,a\n2,20,7,b\n3,30,7,a\n4,45,7,b\n";
        let mut env = load(text, LabelColumn::Name("label".into())).unwrap();
        let rows: Vec<Vec<f32>> = (0..env.rows()).map(|_| env.next_round().context).collect();
        for column in 0..3 {
            let values: Vec<f64> = rows.iter().map(|r| f64::from(r[column])).collect();
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 1e-6, "column {column} mean {mean}");
            if column == 2 {
                assert!(values.iter().all(|&v| v == 0.0), "constant column");
            } else {
                assert!(
                    (var.sqrt() - 1.0).abs() < 1e-6,
                    "column {column} std {}",
                    var.sqrt()
                );
            }
        }
    }

    #[test]
    fn passes_visit_every_row_once_and_reshuffle() {
        let text: String = std::iter::once("x,label\n".to_owned())
            .chain((0..50).map(|i| format!("{i},{}\n", i % 3)))
            .collect();
        let mut env = load(&text, LabelColumn::Last).unwrap();
        assert_eq!(env.classes(), ["0", "1", "2"]);
        let mut passes = Vec::new();
        for _ in 0..3 {
            let pass: Vec<f32> = (0..50).map(|_| env.next_round().context[0]).collect();
            let mut sorted = pass.clone();
            sorted.sort_by(f32::total_cmp);
            sorted.dedup();
            assert_eq!(sorted.len(), 50, "every row exactly once per pass");
            passes.push(pass);
        }
        assert_eq!(env.passes(), 2);
        assert_ne!(passes[0], passes[1], "a new pass is reshuffled");
        assert_ne!(passes[1], passes[2]);
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Classification::from_reader(GOOD.as_bytes(), LabelColumn::Index(2), 9).unwrap();
        let mut b = Classification::from_reader(GOOD.as_bytes(), LabelColumn::Index(2), 9).unwrap();
        for _ in 0..20 {
            assert_eq!(a.next_round(), b.next_round());
        }
    }

    #[test]
    fn numeric_labels_sort_numerically() {
        let text = "x,digit\n1,10\n2,9\n3,2\n4,10\n";
        let env = load(text, LabelColumn::Last).unwrap();
        assert_eq!(env.classes(), ["2", "9", "10"]);
    }

    #[test]
    fn non_numeric_cell_names_column_and_line() {
        let text = "a,b,label\n1,2,x\n3,4,y\n5,oops,x\n";
        let message = error(text, LabelColumn::Last);
        assert!(message.contains("line 4"), "{message}");
        assert!(message.contains("`b`"), "{message}");
        assert!(message.contains("\"oops\""), "{message}");
        // Empty cells and non-finite values are not numbers either.
        let message = error("a,b,label\n1,,x\n", LabelColumn::Last);
        assert!(
            message.contains("line 2") && message.contains("`b`"),
            "{message}"
        );
        let message = error("a,b,label\n1,2,x\n1,NaN,y\n", LabelColumn::Last);
        assert!(
            message.contains("line 3") && message.contains("`b`"),
            "{message}"
        );
        // CRLF line ends and blank lines (even before the header) still count.
        let message = error(
            "\r\na,label\r\n1,x\r\n\r\n2,y\r\nz,y\r\n",
            LabelColumn::Last,
        );
        assert!(
            message.contains("line 6") && message.contains("`a`"),
            "{message}"
        );
        // Blank lines still count.
        let message = error("a,label\n1,x\n\n\nz,y\n", LabelColumn::Last);
        assert!(
            message.contains("line 5") && message.contains("`a`"),
            "{message}"
        );
    }

    #[test]
    fn wrong_field_count_names_the_line() {
        let message = error("a,b,label\n1,2,x\n1,2\n", LabelColumn::Last);
        assert!(message.contains("line 3"), "{message}");
        assert!(
            message.contains("expected 3 fields") && message.contains("found 2"),
            "{message}"
        );
        let message = error("a,b,label\n1,2,x\n3,4,y\n5,6,x,7\n", LabelColumn::Last);
        assert!(
            message.contains("line 4") && message.contains("found 4"),
            "{message}"
        );
    }

    #[test]
    fn line_numbers_count_newlines_inside_quoted_fields() {
        let message = error("a,label\n1,\"two\nlines\"\n2\n", LabelColumn::Last);
        assert!(
            message.contains("line 4") && message.contains("found 1"),
            "{message}"
        );
    }

    #[test]
    fn empty_label_names_the_line() {
        let message = error("a,label\n1,x\n2,\n", LabelColumn::Last);
        assert!(
            message.contains("line 3") && message.contains("`label`"),
            "{message}"
        );
    }

    #[test]
    fn empty_input_and_no_rows() {
        assert!(matches!(
            load("", LabelColumn::Last),
            Err(SimError::EmptyInput)
        ));
        assert!(matches!(
            load("\n\n", LabelColumn::Last),
            Err(SimError::EmptyInput)
        ));
        assert!(matches!(
            load("a,label\n", LabelColumn::Last),
            Err(SimError::NoRows)
        ));
        assert!(matches!(
            load("a,label\n\n", LabelColumn::Last),
            Err(SimError::NoRows)
        ));
        assert!(error("", LabelColumn::Last).contains("empty"));
        assert!(error("a,label\n", LabelColumn::Last).contains("no data rows"));
    }

    #[test]
    fn unknown_label_column() {
        let message = error(GOOD, LabelColumn::Name("class".into()));
        assert!(message.contains("`class`"), "{message}");
        assert!(
            message.contains("sepal, petal, species, width"),
            "{message}"
        );
        let message = error(GOOD, LabelColumn::Index(4));
        assert!(message.contains("#4"), "{message}");
        assert!(matches!(
            load(GOOD, LabelColumn::Index(7)),
            Err(SimError::UnknownLabel { .. })
        ));
    }

    #[test]
    fn label_only_file_has_no_features() {
        assert!(matches!(
            load("label\nx\ny\n", LabelColumn::Last),
            Err(SimError::NoFeatures { .. })
        ));
    }

    #[test]
    fn fewer_than_two_classes() {
        let message = error("a,label\n1,x\n2,x\n", LabelColumn::Last);
        assert!(message.contains("1 distinct class"), "{message}");
        assert!(message.contains("at least 2"), "{message}");
    }

    #[test]
    fn invalid_utf8_is_an_error_with_a_line() {
        let bytes: &[u8] = b"a,label\n1,x\n2,\xff\xfe\n";
        let err = Classification::from_reader(bytes, LabelColumn::Last, 0).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn from_path_reads_a_file_and_reports_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("banditd-sim-cls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("iris.csv");
        std::fs::write(&path, GOOD).unwrap();
        let env = Classification::from_path(&path, LabelColumn::Name("species".into()), 1).unwrap();
        assert_eq!(env.rows(), 5);
        assert_eq!(env.name(), "csv(iris.csv, label=species)");

        let missing = dir.join("missing.csv");
        let err = Classification::from_path(&missing, LabelColumn::Last, 1).unwrap_err();
        assert!(matches!(err, SimError::Io { .. }));
        assert!(err.to_string().contains("missing.csv"), "{err}");
    }

    #[test]
    fn label_column_parse() {
        assert_eq!(LabelColumn::parse("3"), LabelColumn::Index(3));
        assert_eq!(
            LabelColumn::parse("species"),
            LabelColumn::Name("species".into())
        );
        assert_eq!(LabelColumn::parse("-1"), LabelColumn::Name("-1".into()));
    }
}
