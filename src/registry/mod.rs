//! The persisted registry of models: which models this data directory serves and how each is
//! configured, kept in `<data_dir>/models.toml` beside the log and the checkpoints.
//!
//! The configuration file seeds it on the first start (no registry yet); from then on the
//! registry wins, and the admin RPCs (CreateModel, UpdateModel, DeleteModel) change it. Each
//! change is written atomically (temp file, fsync, rename, directory fsync, as checkpoints
//! are) before it is acknowledged, so a `kill -9` at any moment leaves either the old or the
//! new registry, never a torn one. To go back to the file: stop banditd, delete `models.toml`,
//! start it again.
//!
//! The file is TOML, one `[[models]]` table per model with the same settings as the
//! configuration file's under `config`, plus the log position the model was created at.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    config::{LimitsConfig, ModelConfig},
    error::Error,
    storage::checkpoint::{sync_dir, write_atomic},
};

/// The registry's file name in the data directory.
pub const FILE_NAME: &str = "models.toml";

/// One registered model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The log position (LSN) at the model's creation: its learner and its recovery ignore
    /// older records, which belong to a former model of the same name. 0 for models seeded
    /// from the configuration file.
    pub created_lsn: u64,
    /// Its settings, as a `[[models]]` table of the configuration file holds them.
    pub config: ModelConfig,
}

/// The registry file's contents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    models: Vec<Entry>,
}

/// Where the registry lives, and the models it lists, in creation order.
#[derive(Debug, Clone)]
pub struct Registry {
    path: PathBuf,
    entries: Vec<Entry>,
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

impl Registry {
    /// Reads `<data_dir>/models.toml`, or on the first start (no file) seeds it with `seed`
    /// (the configuration file's models) and writes it. Returns the registry and whether it
    /// was seeded now.
    ///
    /// # Errors
    /// The file cannot be read, written or parsed, or a model in it fails validation against
    /// `limits` (the message names the model and the field).
    pub fn open(
        data_dir: &Path,
        seed: &[ModelConfig],
        limits: &LimitsConfig,
    ) -> Result<(Self, bool), Error> {
        let path = data_dir.join(FILE_NAME);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: RegistryFile =
                    toml::from_str(&text).map_err(|e| io("parse", &path, e))?;
                let mut names = std::collections::HashSet::new();
                for entry in &file.models {
                    entry
                        .config
                        .validate_with(limits)
                        .map_err(|e| io("invalid model in", &path, e))?;
                    if !names.insert(entry.config.name.as_str()) {
                        return Err(io(
                            "invalid",
                            &path,
                            format!("two models named {:?}", entry.config.name),
                        ));
                    }
                }
                Ok((
                    Self {
                        path,
                        entries: file.models,
                    },
                    false,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let registry = Self {
                    path,
                    entries: seed
                        .iter()
                        .map(|config| Entry {
                            created_lsn: 0,
                            config: config.clone(),
                        })
                        .collect(),
                };
                registry.save()?;
                Ok((registry, true))
            }
            Err(e) => Err(io("read", &path, e)),
        }
    }

    /// The registered models, in creation order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry of model `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.config.name == name)
    }

    /// This registry with `entry` added (or replacing the entry of the same name, in place),
    /// written durably. `self` is unchanged if the write fails.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn put(&mut self, entry: Entry) -> Result<(), Error> {
        let mut next = self.entries.clone();
        match next.iter_mut().find(|e| e.config.name == entry.config.name) {
            Some(existing) => *existing = entry,
            None => next.push(entry),
        }
        self.replace(next)
    }

    /// This registry without model `name`, written durably; false if it was not there.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn remove(&mut self, name: &str) -> Result<bool, Error> {
        let mut next = self.entries.clone();
        let before = next.len();
        next.retain(|e| e.config.name != name);
        if next.len() == before {
            return Ok(false);
        }
        self.replace(next)?;
        Ok(true)
    }

    fn replace(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        let previous = std::mem::replace(&mut self.entries, entries);
        if let Err(e) = self.save() {
            self.entries = previous;
            return Err(e);
        }
        Ok(())
    }

    /// Writes the file atomically and durably.
    fn save(&self) -> Result<(), Error> {
        let file = RegistryFile {
            models: self.entries.clone(),
        };
        let text = toml::to_string(&file).map_err(|e| io("serialise", &self.path, e))?;
        let header = "# banditd's model registry: written by banditd (CreateModel, UpdateModel, \
                      DeleteModel).\n# Delete this file while banditd is stopped to go back to \
                      the configuration file's models.\n";
        write_atomic(&self.path, format!("{header}{text}").as_bytes())?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ModelKind};

    /// The first open seeds from the file's models; later opens read what was written, and
    /// ignore a different seed; a removed model stays removed.
    #[test]
    fn seeds_once_then_persists() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::embedded_default();
        let limits = LimitsConfig::default();
        let (mut registry, seeded) = Registry::open(dir.path(), &config.models, &limits).unwrap();
        assert!(seeded);
        assert_eq!(registry.entries().len(), 2);
        let mut created = ModelConfig::new("new", ModelKind::FixedArms, 3);
        created.arms = vec!["x".into(), "y".into()];
        created.pending.default_reward = Some(0.25);
        created.rewards.reward_range = Some([-1.0, 1.0]);
        registry
            .put(Entry {
                created_lsn: 17,
                config: created.clone(),
            })
            .unwrap();
        assert!(registry.remove("wheel").unwrap());
        assert!(!registry.remove("wheel").unwrap());
        let (again, seeded) = Registry::open(dir.path(), &config.models[..1], &limits).unwrap();
        assert!(!seeded);
        let names: Vec<&str> = again
            .entries()
            .iter()
            .map(|e| e.config.name.as_str())
            .collect();
        assert_eq!(names, ["items", "new"]);
        assert_eq!(
            again.get("new"),
            Some(&Entry {
                created_lsn: 17,
                config: created
            })
        );
    }

    /// A registry with an invalid model is refused with the model and the field named.
    #[test]
    fn invalid_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let limits = LimitsConfig::default();
        let (mut registry, _) =
            Registry::open(dir.path(), &Config::embedded_default().models, &limits).unwrap();
        let mut bad = registry.entries()[0].clone();
        bad.config.optimizer.learning_rate = -1.0;
        registry.put(bad).unwrap();
        let err = Registry::open(dir.path(), &[], &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("learning_rate"), "{err}");
    }
}
