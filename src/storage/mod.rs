//! Durability: the append-only decision/reward log, model checkpoints, and recovery.
//!
//! # The log
//! `<data_dir>/log/` holds segment files of binary records (decisions, rewards, window
//! closings; `proto/banditd/log/v1/log.proto`), appended in order by one writer thread in
//! group commits and never rewritten. Each record has a log sequence number (LSN). The
//! reward-to-decision join happens in memory: on the way in (the pending store holds the
//! decision, so a reward record carries its training example), at recovery, and at export.
//! Retention deletes whole old segments.
//!
//! Segment files rather than an embedded database: an append is one `write` of the encoded
//! group and costs about a microsecond of CPU per record, readers (the learners, export) need
//! no lock and can read a live server's log, and retention is unlinking a file. The previous
//! redb B-tree log rewrote a JSON row per reward and cost ~40 µs per decision and ~90 µs per
//! reward on the writer thread (see BENCHMARKS.md).
//!
//! # What each durability mode promises
//! - `fsync` (default): a reward is acknowledged only after the write holding it has been
//!   fsynced (`fdatasync`). It survives `kill -9` and power loss.
//! - `periodic`: writes go to the file at once and are fsynced at least every
//!   `sync_interval_ms`. A killed process loses nothing acknowledged (the data is in the
//!   kernel's page cache); a power loss or kernel crash may lose the last interval.
//!
//! Decisions travel through the same writer in order. `ChooseArm` does not wait for its
//! decision's commit unless `sync_decisions` is set: the decision is in the next group commit
//! (well under a millisecond later), and because commits are ordered, every decision answered
//! before an acknowledged reward was sent is durable once that reward is acknowledged. On a
//! clean shutdown everything is flushed.
//!
//! # Who reads it
//! Learners consume their model's examples through a [`Tail`] (storage never calls the
//! learner); each tail's floor keeps retention from deleting what its learner would need to
//! resume from its newest checkpoint.

pub mod checkpoint;
mod export;
mod record;
mod recovery;
mod scan;
mod segment;
mod tail;
mod writer;

use std::{
    fs::{self, File},
    io::Write,
    path::Path,
};

pub use export::{Closed, DecisionRow, LoggedCandidate, export, rows};
pub use record::{Candidate, ClosedRecord, DecisionRecord, ExampleRecord, How, RewardRecord};
pub use recovery::{ModelLog, OpenDecision, Recovered, examples};
pub use scan::ScanSummary;
pub use tail::Tail;
pub use writer::{Ack, Log, LogWriter, Watermark};

use crate::{config::StorageConfig, error::Error};

/// An open data directory: locked against a second server, its log scanned and repaired.
#[derive(Debug)]
pub struct Storage {
    config: StorageConfig,
    /// Held for the process's life: the OS lock that keeps a second server out.
    _lock: File,
}

impl Storage {
    /// Opens (or creates) the data directory and takes its lock.
    ///
    /// # Errors
    /// The directory cannot be created or locked (another banditd uses it), or it holds a log
    /// of the old format (`log.redb`), which this version does not read.
    pub fn open(config: &StorageConfig) -> Result<Self, Error> {
        let dir = &config.data_dir;
        fs::create_dir_all(dir).map_err(|e| {
            Error::Internal(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        let old = dir.join("log.redb");
        if old.exists() {
            return Err(Error::Internal(format!(
                "{} is a log of the earlier format (one redb database), which this version \
                 does not read. Export it with the banditd version that wrote it (`banditd \
                 export > decisions.jsonl`), then move it and the checkpoints/ folder out of \
                 the data directory (or point --data-dir at a new one)",
                old.display()
            )));
        }
        let lock_path = dir.join("LOCK");
        let lock = File::create(&lock_path)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Internal(format!(
                    "{} is in use by another banditd process",
                    dir.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::Internal(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        Ok(Self {
            config: config.clone(),
            _lock: lock,
        })
    }

    /// Starts a new epoch: increments the durable start counter and returns it (1 on the
    /// first start). Model versions are `epoch × 2^32 + publishes`, so they never go
    /// backwards across restarts, even after a crash lost the newest log entries.
    ///
    /// # Errors
    /// The counter cannot be read or written.
    pub fn begin_epoch(&self) -> Result<u64, Error> {
        let path = self.config.data_dir.join("epoch");
        let epoch = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                Error::Internal(format!("{} does not hold a number: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(Error::Internal(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        } + 1;
        write_atomic(&path, format!("{epoch}\n").as_bytes())?;
        Ok(epoch)
    }

    /// Scans the log, cutting off a tail that a crash left half-written, and joins it per
    /// model (see [`recovery`]).
    ///
    /// # Errors
    /// A segment cannot be read (I/O or permissions; corruption is skipped and counted).
    pub fn recover(&self) -> Result<Recovered, Error> {
        recovery::recover(&self.config.data_dir, true)
    }

    /// Starts the writer on a new segment whose first LSN is `first_lsn` (past everything
    /// in the log and everything a checkpoint covers).
    ///
    /// # Errors
    /// The segment cannot be created or the thread cannot be spawned.
    pub fn start_writer(&self, first_lsn: u64) -> Result<(Log, LogWriter), Error> {
        writer::start(&self.config, first_lsn)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |what: &str, p: &Path, e: std::io::Error| {
        Error::Internal(format!("cannot {what} {}: {e}", p.display()))
    };
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("rename", &tmp, e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("fsync", dir, e))?;
    }
    Ok(())
}
