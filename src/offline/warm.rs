//! Warm start: `banditd train --model M --from LOG` trains a model on logged decisions and
//! leaves a data directory the server starts from, so that a new model begins from what the
//! logged traffic already taught instead of from its random initial network.
//!
//! The data directory gets two things:
//! 1. the logged examples, appended to its log as rewards of model M (decision ids
//!    `warm-N`), so that the server's recovery refills the replay buffer with them and refits
//!    NeuralLinear's regressions on them (those statistics are not part of a checkpoint:
//!    every start refits them on the replay buffer);
//! 2. a checkpoint of the trained network and reward statistics covering those examples,
//!    written through [`checkpoint::save`]: the server loads it and does not train on them
//!    again.
//!
//! Training replays the examples in log order as the learner thread would (each buys
//! `updates_per_reward` minibatch steps), then `epochs − 1` more passes' worth of steps on
//! the replay buffer. With inverse-propensity weighting, each example is added
//! `round(w / w_min)` times (at most `max_repeat`), `w = 1/propensity`: a choice the logging
//! policy rarely made counts as much as the choices it would have had to make to stand for
//! it, correcting the logging policy's skew in what the network sees.

use std::path::Path;

use serde::Serialize;

use super::{logs::Log, replay};
use crate::{
    config::{ModelConfig, StorageConfig},
    domain::Example,
    error::Error,
    learner::Trainer,
    storage::{self, ExampleRecord, RewardRecord, Storage, checkpoint},
};

/// How logged examples are weighted in training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weighting {
    /// Every example once.
    None,
    /// By inverse propensity, through repetition (see the module documentation); at most
    /// this many copies of one example.
    Ips {
        /// The most copies of one example.
        max_repeat: usize,
    },
}

/// Options of a warm start.
#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    /// Passes over the examples (at least 1).
    pub epochs: usize,
    /// Example weighting.
    pub weighting: Weighting,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            epochs: 1,
            weighting: Weighting::None,
        }
    }
}

/// What a warm start did.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    /// Logged examples used.
    pub examples: usize,
    /// Examples added to training, repetitions counted.
    pub added: usize,
    /// SGD steps taken.
    pub steps: u64,
    /// The checkpoint's version.
    pub version: u64,
}

/// How many times each example is added: 1, or `round(w / w_min)` capped.
fn repeats(log: &Log, weighting: Weighting) -> Result<Vec<usize>, Error> {
    let Weighting::Ips { max_repeat } = weighting else {
        return Ok(vec![1; log.decisions.len()]);
    };
    let propensities = log
        .decisions
        .iter()
        .map(|d| {
            d.propensity.ok_or_else(|| {
                Error::invalid(
                    format!("{}: propensity", d.at),
                    "missing: inverse-propensity weighting needs every decision's propensity",
                )
            })
        })
        .collect::<Result<Vec<f64>, Error>>()?;
    let p_max = propensities.iter().copied().fold(0.0, f64::max);
    Ok(propensities
        .iter()
        .map(|p| ((p_max / p).round() as usize).clamp(1, max_repeat.max(1)))
        .collect())
}

/// Trains a fresh `model` on `examples` (in order, with their repetitions).
///
/// # Errors
/// A numeric failure inside candle.
pub fn train_examples(
    model: &ModelConfig,
    examples: &[Example],
    repeat: &[usize],
    epochs: usize,
) -> Result<(Trainer, usize), Error> {
    let mut trainer = Trainer::new(model)?;
    let mut added = 0;
    let mut owed_per_pass = 0;
    for (e, &k) in examples.iter().zip(repeat) {
        for _ in 0..k {
            let steps = trainer.add(e.clone());
            trainer.train(steps)?;
            owed_per_pass += steps;
            added += 1;
        }
    }
    trainer.train(owed_per_pass * epochs.saturating_sub(1))?;
    trainer.refresh_linear()?;
    Ok((trainer, added))
}

/// Warm-starts `model` in the data directory `data_dir` from `log` (see the module
/// documentation). The server must not be running on `data_dir`.
///
/// # Errors
/// The data directory is in use or already holds a checkpoint or examples of the model,
/// the log does not fit the model, a propensity is missing under IPS weighting, or I/O.
pub fn train(
    model: &ModelConfig,
    log: &Log,
    data_dir: &Path,
    options: TrainOptions,
) -> Result<Trained, Error> {
    if log.decisions.is_empty() {
        return Err(Error::invalid(
            "from",
            "the log holds no decision with a reward",
        ));
    }
    let prepared = replay::prepare(model, log)?;
    let repeat = repeats(log, options.weighting)?;
    let config = StorageConfig {
        data_dir: data_dir.to_owned(),
        ..StorageConfig::default()
    };
    let store = Storage::open(&config)?;
    let (existing, _) = checkpoint::load_latest(data_dir, &model.name, &model.layer_widths())?;
    if let Some(ck) = existing {
        return Err(Error::invalid(
            "data_dir",
            format!(
                "{} already holds checkpoint version {} of model {:?}: warm start is for a \
                 model without one (use a new data directory)",
                data_dir.display(),
                ck.meta.version,
                model.name
            ),
        ));
    }
    let already = storage::examples(data_dir, &model.name)?.len();
    if already > 0 {
        return Err(Error::invalid(
            "data_dir",
            format!(
                "the log in {} already holds {already} examples of model {:?}: warm start is \
                 for a new model (use a new data directory)",
                data_dir.display(),
                model.name
            ),
        ));
    }
    let recovered = store.recover()?;
    let (log_handle, mut writer) = store.start_writer(recovered.summary.next_lsn)?;
    let now = crate::domain::now_ms();
    let written = (|| -> Result<(), Error> {
        let mut acks = Vec::new();
        for (i, p) in prepared.iter().enumerate() {
            acks.push(log_handle.reward(RewardRecord {
                model: model.name.clone(),
                decision_id: format!("warm-{i}"),
                at_ms: now,
                regret: None,
                example: Some(ExampleRecord {
                    input: p.example.input.clone(),
                    head: p.example.head,
                    reward: p.example.reward,
                }),
            })?);
            // Bounded in flight: the writer's queue is bounded too.
            if acks.len() >= 1024 {
                for ack in acks.drain(..) {
                    ack.blocking_recv()
                        .map_err(|_| Error::Internal("the log writer stopped".into()))??;
                }
            }
        }
        for ack in acks {
            ack.blocking_recv()
                .map_err(|_| Error::Internal("the log writer stopped".into()))??;
        }
        Ok(())
    })();
    log_handle.shutdown();
    writer.shutdown();
    written?;
    // Read back with their log positions, which the checkpoint must cover.
    let examples = storage::examples(data_dir, &model.name)?;
    if examples.len() != prepared.len() {
        return Err(Error::Internal(format!(
            "wrote {} examples, read back {}",
            prepared.len(),
            examples.len()
        )));
    }
    let (trainer, added) = train_examples(model, &examples, &repeat, options.epochs.max(1))?;
    let version = 1;
    let (tensors, meta) = trainer.checkpoint(version)?;
    checkpoint::save(
        data_dir,
        &model.name,
        &tensors,
        meta,
        config.checkpoints_kept,
    )?;
    Ok(Trained {
        examples: examples.len(),
        added,
        steps: trainer.steps(),
        version,
    })
}
