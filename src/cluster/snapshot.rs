//! The snapshot object a trainer uploads and every replica (and the next trainer) loads:
//! the learner's checkpoint files as they are on disk (`storage::checkpoint`'s JSON metadata
//! and safetensors weights, checksummed) plus the replay window, so that a replica refits
//! NeuralLinear's regressions exactly as a restarted learner does, and a new trainer refills
//! its replay buffer without re-reading it from the stream.
//!
//! Layout (integers little-endian): `b"BDSNAP1\n"`, `u32` header length, header JSON,
//! `u32` metadata length, metadata JSON, `u64` weights length, weights, `u32` example count,
//! then per example `u64 seq | u32 head | f64 reward | u32 n | n × f32 input`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::ModelConfig,
    domain::Example,
    error::Error,
    learner::Trainer,
    policy::Snapshot,
    storage::checkpoint::{self, Checkpoint, CheckpointMeta},
};

const MAGIC: &[u8; 8] = b"BDSNAP1\n";

/// What the object says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The model.
    pub model: String,
    /// The weights version.
    pub version: u64,
    /// When the trainer uploaded it (ms since the Unix epoch): the propagation lag's start.
    pub published_ms: u64,
    /// The stream sequence of the last event trained on.
    pub last_seq: u64,
    /// Where a new trainer starts reading the stream: the oldest decision still open at
    /// `last_seq` (its reward or default is not trained yet).
    pub start_seq: u64,
    /// Distinct examples trained over the model's life (each acknowledged reward or default
    /// once: what the exactly-once tests count).
    pub examples_trained: u64,
    /// SGD steps over the model's life.
    pub steps: u64,
}

/// A decoded snapshot object.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Its header.
    pub header: Header,
    /// The checkpoint's metadata file.
    pub meta_json: Vec<u8>,
    /// The checkpoint's weights file.
    pub weights: Vec<u8>,
    /// The replay window (examples up to `header.last_seq`).
    pub examples: Vec<Example>,
}

/// Encodes an object.
pub fn encode(
    header: &Header,
    meta_json: &[u8],
    weights: &[u8],
    examples: &[Example],
) -> Result<Vec<u8>, Error> {
    let head =
        serde_json::to_vec(header).map_err(|e| Error::Internal(format!("snapshot header: {e}")))?;
    let per = examples.first().map_or(0, |e| 24 + 4 * e.input.len());
    let mut out = Vec::with_capacity(
        32 + head.len() + meta_json.len() + weights.len() + per * examples.len(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&(meta_json.len() as u32).to_le_bytes());
    out.extend_from_slice(meta_json);
    out.extend_from_slice(&(weights.len() as u64).to_le_bytes());
    out.extend_from_slice(weights);
    out.extend_from_slice(&(examples.len() as u32).to_le_bytes());
    for e in examples {
        out.extend_from_slice(&e.seq.to_le_bytes());
        out.extend_from_slice(&e.head.to_le_bytes());
        out.extend_from_slice(&e.reward.to_le_bytes());
        out.extend_from_slice(&(e.input.len() as u32).to_le_bytes());
        for x in &e.input {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    Ok(out)
}

/// A cursor over the object's bytes that reports where it ran short.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::Internal(format!(
                "snapshot object truncated in {what} (at byte {}, {} bytes long)",
                self.at,
                self.bytes.len()
            )));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

/// Decodes an object.
///
/// # Errors
/// Not a snapshot object, or truncated.
pub fn decode(bytes: &[u8]) -> Result<Decoded, Error> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len(), "magic")? != MAGIC {
        return Err(Error::Internal("not a banditd snapshot object".into()));
    }
    let n = r.u32("header length")? as usize;
    let header: Header = serde_json::from_slice(r.take(n, "header")?)
        .map_err(|e| Error::Internal(format!("snapshot header: {e}")))?;
    let n = r.u32("metadata length")? as usize;
    let meta_json = r.take(n, "metadata")?.to_vec();
    let n = usize::try_from(r.u64("weights length")?)
        .map_err(|_| Error::Internal("snapshot weights too large".into()))?;
    let weights = r.take(n, "weights")?.to_vec();
    let count = r.u32("example count")? as usize;
    let mut examples = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let seq = r.u64("example")?;
        let head = r.u32("example")?;
        let reward = f64::from_le_bytes(r.array("example")?);
        let len = r.u32("example")? as usize;
        let raw = r.take(len.saturating_mul(4), "example input")?;
        let input = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        examples.push(Example {
            input,
            head,
            reward,
            seq,
        });
    }
    Ok(Decoded {
        header,
        meta_json,
        weights,
        examples,
    })
}

/// The files of the newest checkpoint a learner wrote under `data_dir` for `model`.
///
/// # Errors
/// None written yet, or unreadable.
pub fn newest_files(
    data_dir: &Path,
    model: &str,
) -> Result<(CheckpointMeta, Vec<u8>, Vec<u8>), Error> {
    let dir = data_dir.join("checkpoints").join(model);
    let newest = fs::read_dir(&dir)
        .map_err(|e| Error::Internal(format!("read {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .max()
        .ok_or_else(|| Error::Internal(format!("no checkpoint in {}", dir.display())))?;
    let meta_json = fs::read(&newest)
        .map_err(|e| Error::Internal(format!("read {}: {e}", newest.display())))?;
    let meta: CheckpointMeta = serde_json::from_slice(&meta_json)
        .map_err(|e| Error::Internal(format!("{}: {e}", newest.display())))?;
    let weights_path = newest.with_extension("safetensors");
    let weights = fs::read(&weights_path)
        .map_err(|e| Error::Internal(format!("read {}: {e}", weights_path.display())))?;
    Ok((meta, meta_json, weights))
}

/// Writes the object's checkpoint files under `data_dir` (replacing any there for `model`)
/// and loads them back through `storage::checkpoint`, which checks the checksum and the
/// network's shape against `model`'s configuration.
///
/// # Errors
/// The files cannot be written, or do not make a checkpoint of this model's shape.
pub fn checkpoint(
    data_dir: &Path,
    model: &ModelConfig,
    object: &Decoded,
) -> Result<Checkpoint, Error> {
    let dir: PathBuf = data_dir.join("checkpoints").join(&model.name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)
        .map_err(|e| Error::Internal(format!("create {}: {e}", dir.display())))?;
    let meta: CheckpointMeta = serde_json::from_slice(&object.meta_json)
        .map_err(|e| Error::Internal(format!("snapshot metadata: {e}")))?;
    let stem = format!("{:020}", meta.version);
    let write = |name: String, bytes: &[u8]| {
        let path = dir.join(name);
        fs::write(&path, bytes)
            .map_err(|e| Error::Internal(format!("write {}: {e}", path.display())))
    };
    write(format!("{stem}.safetensors"), &object.weights)?;
    write(format!("{stem}.json"), &object.meta_json)?;
    let (ck, skipped) = checkpoint::load_latest(data_dir, &model.name, &model.layer_widths())?;
    ck.ok_or_else(|| {
        Error::Internal(format!(
            "snapshot of {} v{} unusable: {}",
            model.name,
            object.header.version,
            skipped.reasons.join("; ")
        ))
    })
}

/// Builds the serving snapshot: the checkpoint's weights and reward statistics, and
/// NeuralLinear's regressions refitted on the replay window (as a restarted learner does).
///
/// # Errors
/// The checkpoint does not fit the network, or a numeric failure.
pub fn serving(model: &ModelConfig, ck: &Checkpoint, object: &Decoded) -> Result<Snapshot, Error> {
    let mut trainer = Trainer::new(model)?;
    trainer.restore(ck)?;
    for example in &object.examples {
        trainer.push_replay(example.clone());
    }
    trainer.refresh_linear()?;
    trainer.snapshot(object.header.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object decodes to what was encoded; a truncated one is refused with a reason.
    #[test]
    fn round_trip_and_truncation() {
        let header = Header {
            model: "m".into(),
            version: 7,
            published_ms: 1,
            last_seq: 9,
            start_seq: 3,
            examples_trained: 5,
            steps: 10,
        };
        let examples = vec![Example {
            input: vec![1.0, -2.5],
            head: 1,
            reward: 0.25,
            seq: 4,
        }];
        let bytes = encode(&header, b"{}", b"weights", &examples).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.header, header);
        assert_eq!(back.meta_json, b"{}");
        assert_eq!(back.weights, b"weights");
        assert_eq!(back.examples, examples);
        let err = decode(&bytes[..bytes.len() - 3]).unwrap_err().to_string();
        assert!(err.contains("truncated in example input"), "{err}");
    }
}
