//! Offline evaluation and warm start from logged decisions (issue 15).
//!
//! - [`logs`]: reading logged decisions back: banditd's data directory and export, and the
//!   Open Bandit Dataset's CSV layout; bad input named by line and field.
//! - [`estimate`]: IPS, SNIPS and DR with 95 % intervals and the effective sample size.
//! - [`replay`]: a candidate policy replayed over a log in order, learning as it goes, its
//!   action probabilities from the machinery that computes a decision's `propensity`.
//! - [`evaluate`]: `banditd evaluate`: the report, as a table or JSON.
//! - [`warm`]: `banditd train`: a model trained on a log, written as a checkpoint the
//!   server starts from.
//! - [`cli`]: the two subcommands' flags and what they print.
//! - [`plot`]: SVG plots (estimates with intervals here; regret curves for the load
//!   generator).

pub mod cli;
pub mod estimate;
pub mod evaluate;
pub mod logs;
pub mod plot;
pub mod replay;
pub mod warm;
