//! The admin calls: create, update, delete a model, list its checkpoints and roll it back,
//! while the other models keep serving.
//!
//! Serving reads the models from an `ArcSwap` (one atomic load per call); an admin call builds
//! the next map and swaps it in, under the admin mutex so that two admin calls never race.
//! Each change is written to the registry (`registry/`) before it is acknowledged.
//!
//! A change the learner must see (the learning rate, the policy, a rollback) stops the
//! model's learner, which writes a checkpoint of the weights it serves, and starts a new one
//! from that checkpoint (or, for a rollback, from a new checkpoint holding the old weights at
//! a new version): training continues from there, versions never go backwards. Decisions go
//! on being served from the last snapshot meanwhile; rewards are logged, and the new learner
//! reads them from the log.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use super::{Counters, Engine, ModelRuntime, ModelStatus, Models, start::init_metrics};
use crate::{
    config::{ModelConfig, ModelKind},
    decisions::{PendingStore, UsedIds},
    domain::now_ms,
    error::{ConfigError, Error},
    learner::{Learner, Resume},
    registry::{Entry, Registry},
    storage::{
        Tail, VersionMark,
        checkpoint::{self, Checkpoint, CheckpointMeta},
    },
};

/// A model to create: the shape as fields, every other setting as `key=value` (TOML values,
/// dotted keys for sub-tables), exactly as in a `[[models]]` table of the configuration file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelSpec {
    /// The model's name.
    pub name: String,
    /// Fixed arms or per-arm features; `None` when the request left it unspecified.
    pub kind: Option<ModelKind>,
    /// Length of every context.
    pub context_dim: usize,
    /// The arms of a fixed-arm model.
    pub arms: Vec<String>,
    /// Length of each candidate's features (per-arm models).
    pub arm_feature_dim: usize,
    /// Hidden layer widths; empty = the default (`hidden_layers=[]` in `settings` for none).
    pub hidden_layers: Vec<usize>,
    /// Every other setting.
    pub settings: Vec<String>,
}

/// A retained checkpoint of a model, as ListCheckpoints reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointInfo {
    /// The version of the weights it holds.
    pub version: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// SGD steps the model had taken.
    pub training_steps: u64,
    /// Rewards the model had learned from.
    pub rewards: u64,
}

/// A configuration error as a request error naming the field, with the file's message.
fn config_error(e: ConfigError) -> Error {
    match e {
        ConfigError::Invalid { field, why, .. } => Error::invalid(field, why),
        ConfigError::Parse(detail) => Error::invalid("settings", detail),
        e @ (ConfigError::NoModels | ConfigError::Read { .. }) => Error::Internal(e.to_string()),
    }
}

impl ModelSpec {
    /// The model this spec describes, validated as the configuration file is.
    fn config(&self, limits: &crate::config::LimitsConfig) -> Result<ModelConfig, Error> {
        let kind = match self.kind {
            Some(ModelKind::FixedArms) => "fixed_arms",
            Some(ModelKind::PerArmFeatures) => "per_arm_features",
            None => {
                return Err(Error::invalid(
                    "kind",
                    "must be fixed_arms or per_arm_features",
                ));
            }
        };
        let int = |n: usize| toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX));
        let mut table = toml::Table::new();
        table.insert("name".into(), self.name.clone().into());
        table.insert("kind".into(), kind.into());
        table.insert("context_dim".into(), int(self.context_dim));
        table.insert(
            "arms".into(),
            toml::Value::Array(self.arms.iter().cloned().map(Into::into).collect()),
        );
        table.insert("arm_feature_dim".into(), int(self.arm_feature_dim));
        if !self.hidden_layers.is_empty() {
            table.insert(
                "hidden_layers".into(),
                toml::Value::Array(self.hidden_layers.iter().map(|&w| int(w)).collect()),
            );
        }
        let config = ModelConfig::from_table(toml::Value::Table(table), &self.settings)
            .map_err(config_error)?;
        config.validate_with(limits).map_err(config_error)?;
        Ok(config)
    }
}

/// The admin side of the engine: the registry and the learner threads.
#[derive(Debug)]
pub(super) struct Admin {
    pub(super) registry: Registry,
    /// One learner per registered model, by name.
    pub(super) learners: HashMap<String, Learner>,
    pub(super) data_dir: PathBuf,
    pub(super) checkpoint_interval_secs: u64,
    pub(super) checkpoint_every_examples: u64,
    /// `storage.checkpoints_kept`.
    pub(super) checkpoints_kept: usize,
    /// `storage.retention_hours` in ms: how long a new model remembers its used ids.
    pub(super) retention_ms: u64,
}

/// What starting a learner needs, owned, for the blocking pool.
#[derive(Debug, Clone)]
struct LearnerCtx {
    data_dir: PathBuf,
    checkpoint_interval_secs: u64,
    checkpoint_every_examples: u64,
    checkpoints_kept: usize,
}

impl LearnerCtx {
    /// Starts `config`'s learner on `tail` from `checkpoint` (if any), above
    /// `max_served_version`.
    fn resume(
        &self,
        config: &ModelConfig,
        tail: Tail,
        checkpoint: Option<Checkpoint>,
        max_served_version: u64,
    ) -> Result<Learner, Error> {
        // Examples up to the checkpoint's last go back into replay only; later ones are
        // trained on: read up to the log's end now.
        let catch_up_to = tail.committed();
        // The mark as the stopped learner (or a deleted model of this name) left it: the
        // version is checkpointed and sealed before this call returns, so the acknowledgement
        // names a version a kill -9 brings back.
        let mark = VersionMark::open(&self.data_dir, &config.name)?;
        Learner::resume_marked(
            config,
            Box::new(tail),
            Resume {
                checkpoint,
                catch_up_to,
                max_served_version,
                version_floor: 0,
                data_dir: Some(self.data_dir.clone()),
                checkpoint_interval_secs: self.checkpoint_interval_secs,
                checkpoint_every_examples: self.checkpoint_every_examples,
                checkpoints_kept: self.checkpoints_kept,
            },
            Some(mark),
        )
    }
}

impl Admin {
    fn ctx(&self) -> LearnerCtx {
        LearnerCtx {
            data_dir: self.data_dir.clone(),
            checkpoint_interval_secs: self.checkpoint_interval_secs,
            checkpoint_every_examples: self.checkpoint_every_examples,
            checkpoints_kept: self.checkpoints_kept,
        }
    }

    /// Stops every learner (each writes its final checkpoint).
    pub(super) fn stop_learners(&mut self) {
        for learner in self.learners.values_mut() {
            learner.shutdown();
        }
    }
}

impl Admin {
    /// Applies `change` to the registry, whose write fsyncs, on the blocking pool: an fsync
    /// on a tokio worker would stall every call queued on it. The registry is unchanged if
    /// the write fails.
    async fn persist<T: Send + 'static>(
        &mut self,
        change: impl FnOnce(&mut Registry) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let mut registry = self.registry.clone();
        let (registry, result) = blocking(move || {
            let result = change(&mut registry)?;
            Ok((registry, result))
        })
        .await?;
        self.registry = registry;
        Ok(result)
    }
}

/// Runs blocking work (a learner's stop, start or checkpoint) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("admin task: {e}")))?
}

/// Stops `old` (it writes a checkpoint of the weights it serves) and starts `config`'s
/// learner from that checkpoint, or, with `rollback`, from a new checkpoint that holds the
/// rollback's weights at a version above every one served. Blocking.
fn restart(
    ctx: &LearnerCtx,
    mut old: Learner,
    config: &ModelConfig,
    tail: Tail,
    rollback: Option<Checkpoint>,
) -> Result<Learner, Error> {
    let served = old.handle().snapshot().version;
    old.shutdown();
    let (latest, _) = checkpoint::load_latest(&ctx.data_dir, &config.name, &config.layer_widths())?;
    let checkpoint = match rollback {
        None => latest,
        Some(target) => {
            let current = latest.map(|c| c.meta).ok_or_else(|| {
                Error::Internal(format!(
                    "model {:?}: no checkpoint of the weights it served",
                    config.name
                ))
            })?;
            // The old weights and the reward scale they were trained at; the replay window
            // and the log position of now, so the examples since are not trained on again.
            let meta = CheckpointMeta {
                version: served.max(current.version) + 1,
                widths: target.meta.widths.clone(),
                last_seq: current.last_seq,
                replay_from: current.replay_from,
                reward_n: target.meta.reward_n,
                reward_mean: target.meta.reward_mean,
                reward_m2: target.meta.reward_m2,
                steps: current.steps,
                created_ms: now_ms(),
                weights_checksum: 0,
            };
            checkpoint::save(
                &ctx.data_dir,
                &config.name,
                &target.tensors,
                meta.clone(),
                ctx.checkpoints_kept,
            )?;
            Some(Checkpoint {
                meta,
                tensors: target.tensors,
            })
        }
    };
    ctx.resume(config, tail, checkpoint, served)
}

impl Engine {
    /// The admin state, or FAILED_PRECONDITION-class in cluster mode: replicas serve the
    /// configuration file's models and share one trainer per model, which a change on one
    /// replica would not reach.
    fn admin(&self) -> Result<&tokio::sync::Mutex<Admin>, Error> {
        self.admin.as_ref().ok_or_else(|| Error::ChangeRefused {
            field: "model".into(),
            detail: "models cannot be created, changed, rolled back or deleted at runtime in \
                     cluster mode; change every replica's configuration file and restart them"
                .into(),
        })
    }

    /// The models map with `change` applied, swapped in for serving. Call under the admin
    /// lock (so no other change is lost).
    fn swap_models(&self, change: impl FnOnce(&mut Models)) {
        let mut next = Models::clone(&self.models.load());
        change(&mut next);
        self.models.store(Arc::new(next));
    }

    /// Creates a model from `spec` and serves it at once. A retry with the same spec answers
    /// the model's status; a different model of that name is ALREADY_EXISTS-class.
    ///
    /// # Errors
    /// An invalid spec (INVALID_ARGUMENT-class, naming the field as the configuration file's
    /// validation does), a name taken by another spec, or a storage failure.
    pub async fn create_model(&self, spec: ModelSpec) -> Result<ModelStatus, Error> {
        let config = spec.config(&self.limits)?;
        let mut admin = self.admin()?.lock().await;
        if let Some(existing) = admin.registry.get(&config.name) {
            if existing.config == config {
                return self.model_status(&config.name);
            }
            return Err(Error::ModelExists(config.name));
        }
        // Every record queued so far belongs to earlier models: the new one starts after.
        if let Ok(ack) = self.log.flush() {
            let _ = ack.await;
        }
        let created_lsn = self.log.watermark().lsn_end;
        // A former model of this name may have left checkpoints: they are not this model's.
        let (data_dir, name) = (admin.data_dir.clone(), config.name.clone());
        blocking(move || checkpoint::remove_all(&data_dir, &name)).await?;
        let entry = Entry {
            created_lsn,
            config: config.clone(),
        };
        admin.persist(move |r| r.put(entry)).await?;
        let (ctx, tail, cfg) = (
            admin.ctx(),
            self.log.tail(&config.name, created_lsn),
            config.clone(),
        );
        let learner = match blocking(move || ctx.resume(&cfg, tail, None, 0)).await {
            Ok(learner) => learner,
            Err(e) => {
                // Not acknowledged: take it out of the registry again.
                let name = config.name.clone();
                let _ = admin.persist(move |r| r.remove(&name)).await;
                return Err(e);
            }
        };
        init_metrics(&config);
        let runtime = ModelRuntime::new(
            &config,
            learner.handle(),
            Arc::new(PendingStore::new(
                config.reward_window(),
                config.pending.pending_capacity,
            )),
            Arc::new(UsedIds::new(
                admin.retention_ms,
                self.limits.max_remembered_ids,
            )),
            Arc::new(Counters::default()),
        );
        admin.learners.insert(config.name.clone(), learner);
        self.swap_models(|m| {
            m.map.insert(config.name.clone(), Arc::new(runtime));
            m.order.push(config.name.clone());
        });
        tracing::info!(model = %config.name, created_lsn, "model created");
        self.model_status(&config.name)
    }

    /// Applies `settings` (`key=value`, as in the model's `[[models]]` table) to a model
    /// while it serves. The same settings again change nothing.
    ///
    /// # Errors
    /// Unknown model, an invalid value (INVALID_ARGUMENT-class, naming the field), a setting
    /// that cannot change live (FAILED_PRECONDITION-class, naming it), a storage failure.
    pub async fn update_model(
        &self,
        name: &str,
        settings: &[String],
    ) -> Result<ModelStatus, Error> {
        self.model(name)?;
        // Under the lock from here: the settings apply to the model as the previous admin
        // call left it, so two concurrent updates cannot lose one another's change.
        let mut admin = self.admin()?.lock().await;
        let current = self.model(name)?;
        let config = current
            .config
            .with_settings(settings)
            .map_err(config_error)?;
        config.validate_with(&self.limits).map_err(config_error)?;
        current
            .config
            .live_change(&config)
            .map_err(|(field, detail)| Error::ChangeRefused {
                field: field.into(),
                detail: detail.into(),
            })?;
        let created_lsn = admin.registry.get(name).map_or(0, |e| e.created_lsn);
        if current.config == config {
            return self.model_status(name);
        }
        let entry = Entry {
            created_lsn,
            config: config.clone(),
        };
        admin.persist(move |r| r.put(entry)).await?;
        let learner = self
            .restart_learner(&mut admin, &config, created_lsn, None)
            .await?;
        current.pending.set_window(config.reward_window());
        let runtime = ModelRuntime::new(
            &config,
            learner,
            Arc::clone(&current.pending),
            Arc::clone(&current.used_ids),
            Arc::clone(&current.counters),
        );
        self.swap_models(|m| {
            m.map.insert(name.to_owned(), Arc::new(runtime));
        });
        tracing::info!(model = %name, ?settings, "model updated");
        self.model_status(name)
    }

    /// Stops `name`'s learner and starts `config`'s in its place (see [`restart`]); returns
    /// the new learner's handle. On failure the model keeps serving its last snapshot and
    /// has no learner until the next restart or update (logged).
    async fn restart_learner(
        &self,
        admin: &mut Admin,
        config: &ModelConfig,
        created_lsn: u64,
        rollback: Option<Checkpoint>,
    ) -> Result<crate::learner::LearnerHandle, Error> {
        let old = admin
            .learners
            .remove(&config.name)
            .ok_or_else(|| Error::Internal(format!("model {:?} has no learner", config.name)))?;
        let from = checkpoint::list(&admin.data_dir, &config.name)
            .first()
            .map_or(0, |m| m.replay_from);
        // The tail is opened before the old learner stops, from the newest checkpoint's
        // replay window (the old learner's last checkpoint can only start later): retention
        // cannot delete what the new learner will read.
        let tail = self.log.tail(&config.name, from.max(created_lsn));
        let (ctx, cfg) = (admin.ctx(), config.clone());
        let learner = blocking(move || restart(&ctx, old, &cfg, tail, rollback))
            .await
            .inspect_err(|e| {
                tracing::error!(model = %config.name, error = %e, "cannot restart the learner");
            })?;
        let handle = learner.handle();
        admin.learners.insert(config.name.clone(), learner);
        Ok(handle)
    }

    /// Stops serving a model (NOT_FOUND from then on) and stops its learner, which writes a
    /// final checkpoint; `drop_checkpoints` then deletes its checkpoints. Its records stay in
    /// the log (shared by every model, append-only) until retention removes them; a later
    /// model of the same name never reads them.
    ///
    /// # Errors
    /// Unknown model, or a storage failure.
    pub async fn delete_model(&self, name: &str, drop_checkpoints: bool) -> Result<(), Error> {
        self.model(name)?;
        let mut admin = self.admin()?.lock().await;
        let model = name.to_owned();
        if !admin.persist(move |r| r.remove(&model)).await? {
            return Err(Error::ModelNotFound(name.to_owned()));
        }
        self.swap_models(|m| {
            m.map.remove(name);
            m.order.retain(|n| n != name);
        });
        let learner = admin.learners.remove(name);
        let (data_dir, model) = (admin.data_dir.clone(), name.to_owned());
        blocking(move || {
            // Dropping the learner stops it (final checkpoint) and joins its thread.
            drop(learner);
            if drop_checkpoints {
                checkpoint::remove_all(&data_dir, &model)?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(model = %name, drop_checkpoints, "model deleted");
        Ok(())
    }

    /// The retained checkpoints of a model, newest first: the versions RollbackModel can
    /// go back to.
    ///
    /// # Errors
    /// Unknown model.
    pub async fn list_checkpoints(&self, name: &str) -> Result<Vec<CheckpointInfo>, Error> {
        self.model(name)?;
        let data_dir = self.admin()?.lock().await.data_dir.clone();
        let model = name.to_owned();
        let metas = blocking(move || Ok(checkpoint::list(&data_dir, &model))).await?;
        Ok(metas
            .into_iter()
            .map(|m| CheckpointInfo {
                version: m.version,
                created_ms: m.created_ms,
                training_steps: m.steps,
                rewards: m.reward_n,
            })
            .collect())
    }

    /// Serves the weights of checkpoint `version` again, as a new version above every one
    /// served; training continues from them (examples since are kept for replay, not
    /// trained on again).
    ///
    /// # Errors
    /// Unknown model, a version that is not retained (NOT_FOUND-class), a storage failure.
    pub async fn rollback_model(&self, name: &str, version: u64) -> Result<ModelStatus, Error> {
        self.model(name)?;
        let mut admin = self.admin()?.lock().await;
        let current = self.model(name)?;
        let config = current.config.clone();
        let created_lsn = admin.registry.get(name).map_or(0, |e| e.created_lsn);
        let (data_dir, widths, model) = (
            admin.data_dir.clone(),
            config.layer_widths(),
            name.to_owned(),
        );
        let target =
            blocking(move || checkpoint::load_version(&data_dir, &model, version, &widths)).await?;
        let learner = self
            .restart_learner(&mut admin, &config, created_lsn, Some(target))
            .await?;
        let runtime = ModelRuntime::new(
            &config,
            learner,
            Arc::clone(&current.pending),
            Arc::clone(&current.used_ids),
            Arc::clone(&current.counters),
        );
        self.swap_models(|m| {
            m.map.insert(name.to_owned(), Arc::new(runtime));
        });
        let status = self.model_status(name)?;
        tracing::info!(model = %name, to = version, version = status.model_version, "model rolled back");
        Ok(status)
    }
}
