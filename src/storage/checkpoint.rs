//! Model checkpoints: weights as safetensors plus a small JSON metadata file, written
//! atomically (temp file, fsync, rename, directory fsync). candle's own `save` writes straight
//! to its target, so it is never pointed at the final name.
//!
//! Layout: `<data_dir>/checkpoints/<model>/<version:020>.safetensors` and `.json`. The newest
//! few are kept; loading walks from the newest back and skips (and reports) any that are torn
//! or corrupt. A checkpoint whose network shape differs from the configured one is refused
//! with an error, never loaded into the wrong shapes.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The metadata stored beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The weights version this checkpoint holds.
    pub version: u64,
    /// The network's layer widths, input first, output last: must match the configuration.
    pub widths: Vec<usize>,
    /// The log position (LSN) of the last example folded in before the checkpoint.
    pub last_seq: u64,
    /// The LSN of the oldest example in the replay buffer then: resuming reads the log from
    /// here (examples up to `last_seq` refill replay, later ones are trained on).
    #[serde(default)]
    pub replay_from: u64,
    /// Reward statistics (count, mean, sum of squared deviations).
    pub reward_n: u64,
    /// See `reward_n`.
    pub reward_mean: f64,
    /// See `reward_n`.
    pub reward_m2: f64,
    /// SGD steps taken over the model's life.
    pub steps: u64,
    /// Wall-clock time of the checkpoint, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Checksum of the weights file (FNV-1a 64 of its bytes), to detect corruption.
    pub weights_checksum: u64,
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// The tensors by name (`l{i}.weight`, `l{i}.bias`).
    pub tensors: HashMap<String, Tensor>,
}

/// What loading skipped, for logs and metrics.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Skipped {
    /// Files or checkpoints that could not be used, with the reason.
    pub reasons: Vec<String>,
}

fn model_dir(data_dir: &Path, model: &str) -> PathBuf {
    data_dir.join("checkpoints").join(model)
}

/// FNV-1a, 64 bit: enough to tell a corrupted file from a good one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename.
/// (The rename is durable once the directory is fsynced: [`sync_dir`].)
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    file.write_all(bytes).map_err(|e| io("write", &tmp, e))?;
    file.sync_all().map_err(|e| io("fsync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", &tmp, e))?;
    Ok(())
}

/// fsyncs a directory, making the renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync dir", dir, e))
}

/// Saves a checkpoint of `tensors` for `model` and prunes all but the newest `keep`
/// (`storage.checkpoints_kept`; at least the one just written is kept).
///
/// # Errors
/// An I/O or serialisation failure; the previous checkpoints are untouched then.
pub fn save(
    data_dir: &Path,
    model: &str,
    tensors: &HashMap<String, Tensor>,
    mut meta: CheckpointMeta,
    keep: usize,
) -> Result<(), Error> {
    let dir = model_dir(data_dir, model);
    fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    let stem = format!("{:020}", meta.version);
    let weights_path = dir.join(format!("{stem}.safetensors"));
    // candle writes straight to a path: serialise to a scratch file, read it back for the
    // checksum, and write that atomically under the final name.
    let scratch = dir.join(format!("{stem}.scratch"));
    candle_core::safetensors::save(tensors, &scratch).map_err(|e| io("serialise", &scratch, e))?;
    let bytes = fs::read(&scratch).map_err(|e| io("read", &scratch, e))?;
    let _ = fs::remove_file(&scratch);
    meta.weights_checksum = checksum(&bytes);
    write_atomic(&weights_path, &bytes)?;
    let meta_json = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Internal(e.to_string()))?;
    // The metadata goes last: a checkpoint counts only once its metadata exists.
    write_atomic(&dir.join(format!("{stem}.json")), &meta_json)?;
    sync_dir(&dir)?;
    prune(&dir, keep);
    Ok(())
}

/// Versions that have a metadata file, newest first.
fn versions(dir: &Path) -> Vec<u64> {
    let mut versions: Vec<u64> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions
}

/// Deletes all but the newest `keep` checkpoints (at least 1) and any leftovers of torn
/// writes.
fn prune(dir: &Path, keep: usize) {
    let keep: Vec<String> = versions(dir)
        .into_iter()
        .take(keep.max(1))
        .map(|v| format!("{v:020}"))
        .collect();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap_or_default().to_owned();
        if !keep.contains(&stem) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Loads the newest usable checkpoint of `model` whose shape is `widths`.
///
/// Torn or corrupt checkpoints (missing or unreadable metadata, missing weights, checksum
/// mismatch, undecodable tensors) are skipped and reported. A checkpoint with another shape
/// is an error: the configuration changed the network, and loading would be wrong.
///
/// # Errors
/// [`Error::Internal`] naming the model and both shapes when the newest readable checkpoint
/// has a different shape.
pub fn load_latest(
    data_dir: &Path,
    model: &str,
    widths: &[usize],
) -> Result<(Option<Checkpoint>, Skipped), Error> {
    let dir = model_dir(data_dir, model);
    let mut skipped = Skipped::default();
    // Weights without metadata are torn writes (metadata is written last).
    for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors")
            && !path.with_extension("json").exists()
        {
            skipped
                .reasons
                .push(format!("{}: weights without metadata", path.display()));
        }
    }
    for version in versions(&dir) {
        let (meta, tensors) = match load_one(&dir, version) {
            Ok(loaded) => loaded,
            Err(reason) => {
                skipped.reasons.push(reason);
                continue;
            }
        };
        let meta_path = dir.join(format!("{version:020}.json"));
        if meta.widths != widths {
            return Err(Error::Internal(format!(
                "model {model:?}: checkpoint {} has layer widths {:?} but the configuration gives {widths:?}; \
                 restore the configuration or move {} away to start this model afresh",
                meta_path.display(),
                meta.widths,
                dir.display()
            )));
        }
        return Ok((Some(Checkpoint { meta, tensors }), skipped));
    }
    Ok((None, skipped))
}

/// Checkpoint `version` of the model whose checkpoints are in `dir`: its metadata and
/// tensors, or why it cannot be used (torn, corrupt).
fn load_one(dir: &Path, version: u64) -> Result<(CheckpointMeta, HashMap<String, Tensor>), String> {
    let stem = format!("{version:020}");
    let meta_path = dir.join(format!("{stem}.json"));
    let weights_path = dir.join(format!("{stem}.safetensors"));
    let meta: CheckpointMeta = fs::read(&meta_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: unreadable metadata: {e}", meta_path.display()))?;
    let bytes = fs::read(&weights_path).map_err(|e| format!("{}: {e}", weights_path.display()))?;
    if checksum(&bytes) != meta.weights_checksum {
        return Err(format!(
            "{}: checksum mismatch (corrupt)",
            weights_path.display()
        ));
    }
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| format!("{}: {e}", weights_path.display()))?;
    Ok((meta, tensors))
}

/// The metadata of every retained checkpoint of `model` that can be read, newest first (the
/// versions a rollback can go back to; the weights are checked when one is loaded).
pub fn list(data_dir: &Path, model: &str) -> Vec<CheckpointMeta> {
    let dir = model_dir(data_dir, model);
    versions(&dir)
        .into_iter()
        .filter_map(|v| {
            let bytes = fs::read(dir.join(format!("{v:020}.json"))).ok()?;
            serde_json::from_slice(&bytes).ok()
        })
        .collect()
}

/// Loads checkpoint `version` of `model`, if it is retained, intact and of shape `widths`.
///
/// # Errors
/// [`Error::CheckpointNotFound`] when it is not retained or cannot be used (the reason is
/// logged), [`Error::Internal`] when its shape is not `widths`.
pub fn load_version(
    data_dir: &Path,
    model: &str,
    version: u64,
    widths: &[usize],
) -> Result<Checkpoint, Error> {
    let not_found = || Error::CheckpointNotFound {
        model: model.to_owned(),
        version,
    };
    let dir = model_dir(data_dir, model);
    if !versions(&dir).contains(&version) {
        return Err(not_found());
    }
    let (meta, tensors) = load_one(&dir, version).map_err(|reason| {
        tracing::warn!(%model, %reason, "checkpoint cannot be loaded");
        not_found()
    })?;
    if meta.widths != widths {
        return Err(Error::Internal(format!(
            "model {model:?}: checkpoint {version} has layer widths {:?}, the model {widths:?}",
            meta.widths
        )));
    }
    Ok(Checkpoint { meta, tensors })
}

/// Deletes every checkpoint of `model` (a deleted model's, when asked, or a former model's of
/// the same name before a new one starts).
///
/// # Errors
/// The directory exists and cannot be removed.
pub fn remove_all(data_dir: &Path, model: &str) -> Result<(), Error> {
    let dir = model_dir(data_dir, model);
    match fs::remove_dir_all(&dir) {
        Ok(()) => sync_dir(&data_dir.join("checkpoints")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(v: f32) -> HashMap<String, Tensor> {
        HashMap::from([(
            "l0.weight".to_owned(),
            Tensor::full(v, (2, 3), &Device::Cpu).unwrap(),
        )])
    }

    fn meta(version: u64) -> CheckpointMeta {
        CheckpointMeta {
            version,
            widths: vec![2, 3],
            last_seq: version * 10,
            replay_from: version * 5,
            reward_n: 1,
            reward_mean: 0.5,
            reward_m2: 0.0,
            steps: 2,
            created_ms: 0,
            weights_checksum: 0,
        }
    }

    /// Save then load gives the newest; only the newest 3 are kept.
    #[test]
    fn round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        for v in 1..=5 {
            save(dir.path(), "m", &tensors(v as f32), meta(v), 3).unwrap();
        }
        let (ck, skipped) = load_latest(dir.path(), "m", &[2, 3]).unwrap();
        let ck = ck.unwrap();
        assert!(skipped.reasons.is_empty());
        assert_eq!((ck.meta.version, ck.meta.last_seq), (5, 50));
        assert_eq!(ck.tensors["l0.weight"].to_vec2::<f32>().unwrap()[0][0], 5.0);
        assert_eq!(versions(&model_dir(dir.path(), "m")), vec![5, 4, 3]);
    }

    /// `keep` is honoured: 5 keeps five of seven (each still loadable, so a rollback can
    /// reach the oldest), a later save with 2 prunes to two, and 0 still keeps the one just
    /// written.
    #[test]
    fn keep_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let mdir = model_dir(dir.path(), "m");
        for v in 1..=7 {
            save(dir.path(), "m", &tensors(v as f32), meta(v), 5).unwrap();
        }
        assert_eq!(versions(&mdir), vec![7, 6, 5, 4, 3]);
        let oldest = load_version(dir.path(), "m", 3, &[2, 3]).unwrap();
        assert_eq!(
            oldest.tensors["l0.weight"].to_vec2::<f32>().unwrap()[0][0],
            3.0
        );
        save(dir.path(), "m", &tensors(8.0), meta(8), 2).unwrap();
        assert_eq!(versions(&mdir), vec![8, 7]);
        let files = fs::read_dir(&mdir).unwrap().count();
        assert_eq!(
            files, 4,
            "a weights and a metadata file per kept checkpoint"
        );
        save(dir.path(), "m", &tensors(9.0), meta(9), 0).unwrap();
        assert_eq!(versions(&mdir), vec![9]);
    }

    /// A corrupt newest checkpoint and a missing metadata file are skipped, not fatal.
    #[test]
    fn corrupt_checkpoints_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for v in 1..=3 {
            save(dir.path(), "m", &tensors(v as f32), meta(v), 3).unwrap();
        }
        let mdir = model_dir(dir.path(), "m");
        let newest = mdir.join(format!("{:020}.safetensors", 3));
        let mut bytes = fs::read(&newest).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        fs::write(&newest, bytes).unwrap();
        fs::remove_file(mdir.join(format!("{:020}.json", 2))).unwrap();
        let (ck, skipped) = load_latest(dir.path(), "m", &[2, 3]).unwrap();
        assert_eq!(ck.unwrap().meta.version, 1);
        assert_eq!(skipped.reasons.len(), 2, "{skipped:?}");
    }

    /// A checkpoint of another shape is refused with an error naming both shapes.
    #[test]
    fn shape_change_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), "m", &tensors(1.0), meta(1), 3).unwrap();
        let err = load_latest(dir.path(), "m", &[2, 4])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 3]") && err.contains("[2, 4]"), "{err}");
    }
}
