//! A replica's snapshot watcher: follows the model's version key, downloads the snapshot
//! object, builds the serving snapshot off the async workers, and swaps it in whole (never a
//! half-loaded one). Versions only go forward ([`LearnerHandle::install`]).

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::{
    nats::{Nats, version_key},
    snapshot, telemetry,
    trainer::{VersionValue, fetch},
};
use crate::{config::ModelConfig, domain::now_ms, error::Error, learner::LearnerHandle};

/// Watches one model.
#[derive(Debug)]
pub(super) struct Watcher {
    nats: Arc<Nats>,
    model: ModelConfig,
    weights: LearnerHandle,
    /// Scratch directory the checkpoint files are written to and loaded from.
    dir: PathBuf,
}

impl Watcher {
    pub(super) fn new(
        nats: Arc<Nats>,
        model: ModelConfig,
        weights: LearnerHandle,
        dir: PathBuf,
    ) -> Self {
        Self {
            nats,
            model,
            weights,
            dir,
        }
    }

    /// Downloads and installs the newest snapshot, if it is newer than the one serving.
    pub(super) async fn load_latest(&self) {
        match fetch(&self.nats, &self.model.name).await {
            Ok(Some(bytes)) => {
                if let Err(e) = self.install(bytes).await {
                    telemetry::snapshot_failed(&self.model.name);
                    tracing::warn!(model = %self.model.name, error = %e, "cannot load the snapshot");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(model = %self.model.name, error = %e, "cannot fetch the snapshot")
            }
        }
    }

    async fn install(&self, bytes: Vec<u8>) -> Result<(), Error> {
        let (model, dir) = (self.model.clone(), self.dir.clone());
        let current = self.weights.snapshot().version;
        let built = tokio::task::spawn_blocking(move || {
            let object = snapshot::decode(&bytes)?;
            if object.header.version <= current {
                return Ok(None);
            }
            let ck = snapshot::checkpoint(&dir, &model, &object)?;
            let serving = snapshot::serving(&model, &ck, &object)?;
            Ok::<_, Error>(Some((serving, object.header)))
        })
        .await
        .map_err(|e| Error::Internal(format!("snapshot build panicked: {e}")))??;
        let Some((serving, header)) = built else {
            return Ok(());
        };
        if self.weights.install(Arc::new(serving)) {
            self.weights.set_steps(header.steps);
            let lag = Duration::from_millis(now_ms().saturating_sub(header.published_ms));
            telemetry::snapshot_installed(&self.model.name, header.version, lag);
            tracing::debug!(model = %self.model.name, version = header.version, ?lag, "snapshot installed");
        }
        Ok(())
    }

    /// Follows the version key until `stop`; after a lost watch (NATS restarted) it reloads
    /// the newest snapshot and watches again.
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let key = version_key(&self.model.name);
        loop {
            match self.nats.state().watch(&key).await {
                Ok(mut updates) => loop {
                    tokio::select! {
                        next = updates.next() => match next {
                            Some(Ok(entry)) => {
                                let newer = serde_json::from_slice::<VersionValue>(&entry.value)
                                    .is_ok_and(|v| v.version > self.weights.snapshot().version);
                                if newer {
                                    self.load_latest().await;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!(model = %self.model.name, error = %e, "version watch failed");
                                break;
                            }
                            None => break,
                        },
                        _ = stop.changed() => return,
                    }
                },
                Err(e) => {
                    tracing::warn!(model = %self.model.name, error = %e, "cannot watch the version");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => self.load_latest().await,
                _ = stop.changed() => return,
            }
        }
    }
}
