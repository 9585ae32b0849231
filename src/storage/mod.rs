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
//! (at most `commit_delay_us`, 1 ms by default, after the previous one, or at once with the
//! next reward), and because commits are ordered, every decision answered
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
mod versions;
mod writer;

use std::{
    fs::{self, File},
    path::Path,
};

pub use export::{Closed, DecisionRow, LoggedCandidate, export, rows};
pub use record::{Candidate, ClosedRecord, DecisionRecord, ExampleRecord, How, RewardRecord};
pub use recovery::{ModelLog, OpenDecision, Recovered, RewardSums, examples};
pub use scan::ScanSummary;
pub use tail::Tail;
pub use versions::{RESERVE_BLOCK, VersionMark};
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

    /// Migrates a data directory whose model versions came from a start counter (the
    /// `epoch` file of earlier versions) to per-model version marks ([`VersionMark`]): the
    /// counter becomes a floor under every mark, so versions go on above every one it
    /// allowed. Returns the epoch migrated, if any.
    ///
    /// # Errors
    /// The files cannot be read, written or removed.
    pub fn migrate_epoch(&self) -> Result<Option<u64>, Error> {
        versions::migrate_epoch(&self.config.data_dir)
    }

    /// Scans the log, cutting off a tail that a crash left half-written, and joins it per
    /// model (see [`recovery`]).
    ///
    /// # Errors
    /// A segment cannot be read (I/O or permissions; corruption is skipped and counted).
    pub fn recover(&self) -> Result<Recovered, Error> {
        self.recover_models(&std::collections::HashMap::new())
    }

    /// [`Storage::recover`], leaving out of each model's counts and holdout groups the
    /// decisions older than its creation LSN in `created` (a deleted model's of that name).
    ///
    /// # Errors
    /// As [`Storage::recover`].
    pub fn recover_models(
        &self,
        created: &std::collections::HashMap<String, u64>,
    ) -> Result<Recovered, Error> {
        recovery::recover(&self.config.data_dir, true, created)
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

#[cfg(test)]
mod tests {
    //! Replaying the log reproduces the live state: a random sequence of decisions, rewards,
    //! window closings and restarts is written through the real writer, mirrored in a plain
    //! in-memory model, and recovery, the example scan and a learner's tail must all give
    //! back what the model says.

    use std::{collections::BTreeMap, path::PathBuf, time::Duration};

    use proptest::prelude::*;

    use super::*;
    use crate::{
        config::{DurabilityMode, StorageConfig},
        domain::Example,
    };

    const MODELS: [&str; 2] = ["a", "b"];

    /// Each model's examples as (input, head, reward), in log order.
    type Logged<'a> = BTreeMap<&'a str, Vec<(Vec<f32>, u32, f64)>>;

    #[derive(Debug, Clone)]
    enum Step {
        Decide {
            model: usize,
            version: u64,
        },
        Reward {
            pick: prop::sample::Index,
            value: f64,
        },
        Close {
            pick: prop::sample::Index,
            how: u8,
            default: Option<f64>,
        },
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        let value = (-8i32..=8).prop_map(|v| f64::from(v) * 0.25);
        prop_oneof![
            4 => (0..2usize, 0..20u64).prop_map(|(model, version)| Step::Decide { model, version }),
            4 => (any::<prop::sample::Index>(), value.clone())
                .prop_map(|(pick, value)| Step::Reward { pick, value }),
            2 => (any::<prop::sample::Index>(), 0..4u8, prop::option::of(value))
                .prop_map(|(pick, how, default)| Step::Close { pick, how, default }),
            1 => Just(Step::Restart),
        ]
    }

    #[derive(Debug, Clone)]
    struct Modelled {
        model: &'static str,
        id: String,
        version: u64,
        input: Vec<f32>,
        head: u32,
        reward: Option<f64>,
        closed: bool,
    }

    fn config(dir: &Path, segment_bytes: u64) -> StorageConfig {
        StorageConfig {
            data_dir: dir.to_owned(),
            durability: DurabilityMode::Periodic,
            sync_interval_ms: 1_000,
            segment_bytes,
            ..StorageConfig::default()
        }
    }

    struct Running {
        log: Log,
        writer: LogWriter,
        _storage: Storage,
    }

    impl Running {
        fn start(dir: &Path, segment_bytes: u64) -> (Self, Recovered) {
            Self::start_with(&config(dir, segment_bytes))
        }

        fn start_with(config: &StorageConfig) -> (Self, Recovered) {
            let storage = Storage::open(config).unwrap();
            let recovered = storage.recover().unwrap();
            let (log, writer) = storage.start_writer(recovered.summary.next_lsn).unwrap();
            (
                Self {
                    log,
                    writer,
                    _storage: storage,
                },
                recovered,
            )
        }

        fn stop(mut self) {
            self.log.shutdown();
            self.writer.shutdown();
        }

        /// Waits until everything queued is committed.
        fn flush(&self) {
            self.log.flush().unwrap().blocking_recv().unwrap().unwrap();
        }

        /// Logs a reward of `value` for `d`; returns its acknowledgement.
        fn reward(&self, d: &Modelled, value: f64) -> writer::Ack {
            self.log
                .reward(RewardRecord {
                    model: d.model.to_owned(),
                    decision_id: d.id.clone(),
                    at_ms: 2,
                    regret: None,
                    example: example(d, value),
                })
                .unwrap()
        }
    }

    /// A decision of `model` with input `[i]`, open and unrewarded.
    fn open_decision(model: &'static str, i: u32) -> Modelled {
        Modelled {
            model,
            id: format!("{model}{i}"),
            version: 1,
            input: vec![i as f32],
            head: 0,
            reward: None,
            closed: false,
        }
    }

    fn decision(d: &Modelled) -> DecisionRecord {
        DecisionRecord {
            model: d.model.to_owned(),
            decision_id: d.id.clone(),
            decided_ms: 1,
            context: d.input.clone(),
            candidates: vec![Candidate {
                id: d.head.to_string(),
                features: Vec::new(),
            }],
            chosen: 0,
            scores: vec![0.5],
            model_version: d.version,
            head: d.head,
            propensity: None,
            request_hash: 7,
            holdout: false,
        }
    }

    fn example(d: &Modelled, reward: f64) -> Option<ExampleRecord> {
        Some(ExampleRecord {
            input: d.input.clone(),
            head: d.head,
            reward,
        })
    }

    /// What recovery must find open for `model`, and the examples it must have logged.
    fn check(
        dir: &Path,
        recovered: &Recovered,
        decisions: &[Modelled],
        examples: &Logged<'_>,
    ) -> Result<(), TestCaseError> {
        for model in MODELS {
            let want: Vec<(String, Option<f64>)> = decisions
                .iter()
                .filter(|d| d.model == model && !d.closed)
                .map(|d| (d.id.clone(), d.reward))
                .collect();
            let logged = recovered.models.get(model).cloned().unwrap_or_default();
            let have: Vec<(String, Option<f64>)> = logged
                .open
                .iter()
                .map(|o| (o.record.decision_id.clone(), o.reward))
                .collect();
            prop_assert_eq!(have, want, "open decisions of {}", model);
            let max_version = decisions
                .iter()
                .filter(|d| d.model == model)
                .map(|d| d.version)
                .max()
                .unwrap_or(0);
            prop_assert_eq!(logged.max_version, max_version);
            let want = examples.get(model).cloned().unwrap_or_default();
            let have: Vec<Example> = recovery::examples(dir, model).unwrap();
            prop_assert!(
                have.windows(2).all(|w| w[0].seq < w[1].seq),
                "LSNs increase"
            );
            let have: Vec<(Vec<f32>, u32, f64)> = have
                .into_iter()
                .map(|e| (e.input, e.head, e.reward))
                .collect();
            prop_assert_eq!(have, want, "examples of {}", model);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Recovery, the example scan and a tail from the start agree with the live process
        /// after any sequence of events and restarts, with segments rolled every few records.
        #[test]
        fn recovery_and_tail_replay_the_live_state(
            steps in prop::collection::vec(step(), 1..60),
            segment_bytes in prop_oneof![Just(64u64), Just(512), Just(1 << 20)],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (mut running, _) = Running::start(dir.path(), segment_bytes);
            let mut decisions: Vec<Modelled> = Vec::new();
            let mut examples: Logged<'_> = BTreeMap::new();
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Decide { model, version } => {
                        let n = decisions.len();
                        let d = Modelled {
                            model: MODELS[model],
                            id: format!("d{n}"),
                            version,
                            input: vec![n as f32, -(i as f32)],
                            head: (n % 3) as u32,
                            reward: None,
                            closed: false,
                        };
                        prop_assert!(running.log.decision(decision(&d)).unwrap().is_none());
                        decisions.push(d);
                    }
                    Step::Reward { pick, value } => {
                        if decisions.is_empty() {
                            continue;
                        }
                        let k = pick.index(decisions.len());
                        let d = decisions[k].clone();
                        if d.closed || d.reward.is_some() {
                            continue;
                        }
                        let ack = running.log.reward(RewardRecord {
                            model: d.model.to_owned(),
                            decision_id: d.id.clone(),
                            at_ms: 2,
                            regret: None,
                            example: example(&d, value),
                        }).unwrap();
                        prop_assert!(ack.blocking_recv().unwrap().is_ok());
                        decisions[k].reward = Some(value);
                        examples.entry(d.model).or_default().push((d.input.clone(), d.head, value));
                    }
                    Step::Close { pick, how, default } => {
                        if decisions.is_empty() {
                            continue;
                        }
                        let k = pick.index(decisions.len());
                        let d = decisions[k].clone();
                        if d.closed {
                            continue;
                        }
                        let (how, example) = match (how, d.reward, default) {
                            (0, _, _) => (How::Evicted, None),
                            (_, Some(_), _) => (How::Rewarded, None),
                            (_, None, Some(r)) => {
                                examples.entry(d.model).or_default().push((d.input.clone(), d.head, r));
                                (How::Defaulted, example(&d, r))
                            }
                            (_, None, None) => (How::Dropped, None),
                        };
                        running.log.closed(ClosedRecord {
                            model: d.model.to_owned(),
                            decision_id: d.id.clone(),
                            at_ms: 3,
                            how: how as i32,
                            example,
                        }).unwrap();
                        decisions[k].closed = true;
                    }
                    Step::Restart => {
                        running.stop();
                        let (again, recovered) = Running::start(dir.path(), segment_bytes);
                        check(dir.path(), &recovered, &decisions, &examples)?;
                        running = again;
                    }
                }
            }
            running.flush();
            // A learner's tail from the start reads every example, across segments and the
            // gaps restarts leave between them.
            let end = running.log.watermark().lsn_end;
            for model in MODELS {
                let mut tail = running.log.tail(model, 0);
                let mut read = Vec::new();
                while tail.position() < end {
                    let batch = tail.poll(7, Duration::from_millis(10)).unwrap().unwrap();
                    if batch.is_empty() && tail.position() < end {
                        prop_assert!(false, "the tail stopped at {} before {}", tail.position(), end);
                    }
                    read.extend(batch.into_iter().map(|e| (e.input, e.head, e.reward)));
                }
                let want = examples.get(model).cloned().unwrap_or_default();
                prop_assert_eq!(read, want, "tail of {}", model);
            }
            running.stop();
            let (running, recovered) = Running::start(dir.path(), segment_bytes);
            check(dir.path(), &recovered, &decisions, &examples)?;
            running.stop();
        }
    }

    /// A commit wakes the tails of the models it holds examples for and no other: decisions
    /// (no example) and another model's reward leave a tail asleep, and it still reads past
    /// them. Stopping the writer wakes every tail.
    #[test]
    fn commits_wake_only_the_tails_of_their_examples_models() {
        let dir = tempfile::tempdir().unwrap();
        let (running, _) = Running::start(dir.path(), 1 << 20);
        let mut a = running.log.tail("a", 0);
        let mut b = running.log.tail("b", 0);
        for i in 0..5 {
            for model in MODELS {
                let d = decision(&open_decision(model, i));
                assert!(running.log.decision(d).unwrap().is_none());
            }
            running.flush();
        }
        assert_eq!((a.wakes(), b.wakes()), (0, 0), "decisions woke a tail");
        let ack = running.reward(&open_decision("a", 0), 1.0);
        ack.blocking_recv().unwrap().unwrap();
        assert_eq!((a.wakes(), b.wakes()), (1, 0), "a's reward woke b or not a");
        let end = running.log.watermark().lsn_end;
        let read_a = a.poll(100, Duration::ZERO).unwrap().unwrap();
        let read_b = b.poll(100, Duration::ZERO).unwrap().unwrap();
        assert_eq!(read_a.iter().map(|e| e.reward).collect::<Vec<_>>(), [1.0]);
        assert!(read_b.is_empty());
        assert_eq!((a.position(), b.position()), (end, end));
        running.stop();
        assert_eq!(
            (a.wakes(), b.wakes()),
            (2, 1),
            "stopping the writer woke not every tail"
        );
    }

    /// Tails that read while events are written, skipping what holds none of their model's
    /// examples, still get every example of their model in order: decisions of both models,
    /// rewards of each, commits of every mix, over segments of a few hundred bytes.
    #[test]
    fn live_tails_skip_only_what_holds_none_of_their_examples() {
        let dir = tempfile::tempdir().unwrap();
        let (running, _) = Running::start(dir.path(), 512);
        let mut tails: Vec<_> = MODELS.iter().map(|m| running.log.tail(m, 0)).collect();
        let mut read: Vec<Vec<f64>> = vec![Vec::new(); MODELS.len()];
        let mut written: Vec<Vec<f64>> = vec![Vec::new(); MODELS.len()];
        let mut state = 12345u64;
        for i in 0..400u32 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let pick = (state >> 33) as usize;
            let m = pick % MODELS.len();
            let d = open_decision(MODELS[m], i);
            let _ = running.log.decision(decision(&d)).unwrap();
            if pick.is_multiple_of(7) {
                let value = f64::from(i);
                let ack = running.reward(&d, value);
                written[m].push(value);
                if pick.is_multiple_of(3) {
                    ack.blocking_recv().unwrap().unwrap();
                }
            }
            if pick.is_multiple_of(5) {
                running.flush();
            }
            for (tail, got) in tails.iter_mut().zip(&mut read) {
                let batch = tail.poll(3, Duration::ZERO).unwrap().unwrap();
                got.extend(batch.into_iter().map(|e| e.reward));
            }
        }
        running.flush();
        let end = running.log.watermark().lsn_end;
        for (tail, got) in tails.iter_mut().zip(&mut read) {
            while tail.position() < end {
                let batch = tail.poll(100, Duration::from_millis(10)).unwrap().unwrap();
                got.extend(batch.into_iter().map(|e| e.reward));
            }
        }
        assert!(
            written.iter().all(|w| w.len() > 10),
            "too few rewards: {written:?}"
        );
        assert_eq!(read, written);
        running.stop();
    }

    /// What recovery found: (records, whether it cut torn bytes, corrupt segments).
    fn found(recovered: &Recovered) -> (u64, bool, u64) {
        let summary = &recovered.summary;
        (
            summary.records,
            summary.torn_bytes > 0,
            summary.corrupt_segments,
        )
    }

    /// Logs three rewards of model "a" (inputs 0, 1, 2), each acknowledged.
    fn three_rewards(running: &Running) {
        for i in 0..3 {
            let ack = running.reward(&open_decision("a", i), 1.0);
            ack.blocking_recv().unwrap().unwrap();
        }
    }

    /// The segment files under `dir`, oldest first.
    fn segments(dir: &Path) -> Vec<PathBuf> {
        segment::list(&segment::dir(dir))
            .unwrap()
            .into_iter()
            .map(|(_, path)| path)
            .collect()
    }

    /// A copy of the data directory `from` as a crash would leave it now (the writer still
    /// running: its segment ends in preallocated zeros).
    fn crash_copy(from: &Path) -> tempfile::TempDir {
        let copy = tempfile::tempdir().unwrap();
        fs::create_dir_all(segment::dir(copy.path())).unwrap();
        for path in segments(from) {
            fs::copy(
                &path,
                segment::dir(copy.path()).join(path.file_name().unwrap()),
            )
            .unwrap();
        }
        copy
    }

    /// The writer keeps zeros ahead of its records: a crash leaves them at the end of the
    /// newest segment, where recovery reads the end of the records (nothing torn, nothing
    /// corrupt); a clean stop cuts them off.
    #[test]
    fn preallocated_zeros_end_the_records_and_go_at_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (running, _) = Running::start(dir.path(), 1 << 20);
        three_rewards(&running);
        let committed = running.log.watermark().offset;
        let newest = segments(dir.path()).pop().unwrap();
        assert!(fs::metadata(&newest).unwrap().len() >= committed + (1 << 19));
        let crashed = crash_copy(dir.path());
        running.stop();
        assert_eq!(fs::metadata(&newest).unwrap().len(), committed);
        let (again, recovered) = Running::start(crashed.path(), 1 << 20);
        assert_eq!(found(&recovered), (3, false, 0));
        // Recovery cut the zeros too: the crashed segment is now sealed like any other.
        assert_eq!(
            fs::metadata(&segments(crashed.path())[0]).unwrap().len(),
            committed
        );
        again.stop();
    }

    /// A last record that fails its checksum with nothing after it (a clean stop cut the
    /// zeros) is damage, as it always was: counted as corrupt, not cut off as torn.
    #[test]
    fn a_bad_last_record_with_nothing_after_it_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (running, _) = Running::start(dir.path(), 1 << 20);
        three_rewards(&running);
        let committed = running.log.watermark().offset;
        running.stop();
        let path = segments(dir.path())[0].clone();
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, committed);
        bytes[committed as usize - 3] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let (again, recovered) = Running::start(dir.path(), 1 << 20);
        assert_eq!(found(&recovered), (2, false, 1));
        again.stop();
    }

    /// A disk without room for the zeros still takes the records: the writer appends for the
    /// rest of the segment, every record acknowledged and recovered.
    #[test]
    fn without_room_to_preallocate_the_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20);
        config
            .faults
            .fail_preallocation
            .store(true, std::sync::atomic::Ordering::Release);
        let (running, _) = Running::start_with(&config);
        three_rewards(&running);
        let committed = running.log.watermark().offset;
        let newest = segments(dir.path()).pop().unwrap();
        assert_eq!(fs::metadata(&newest).unwrap().len(), committed);
        running.stop();
        let (again, recovered) = Running::start(dir.path(), 1 << 20);
        assert_eq!(recovered.summary.records, 3);
        again.stop();
    }

    /// A record cut short inside the preallocated zeros (its last bytes still zero) is a torn
    /// write: cut off at recovery, the records before it kept. Zeros that hide a record
    /// header with records after them are corruption, not the end.
    #[test]
    fn a_record_cut_short_before_the_zeros_is_torn_and_zeros_before_records_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (running, _) = Running::start(dir.path(), 1 << 20);
        three_rewards(&running);
        let committed = running.log.watermark().offset;
        let torn = crash_copy(dir.path());
        let hidden = crash_copy(dir.path());
        running.stop();
        let zero = |path: &Path, at: u64, n: usize| {
            let mut bytes = fs::read(path).unwrap();
            bytes[at as usize..at as usize + n].fill(0);
            fs::write(path, bytes).unwrap();
        };
        zero(&segments(torn.path())[0], committed - 5, 5);
        let (again, recovered) = Running::start(torn.path(), 1 << 20);
        assert_eq!(found(&recovered), (2, true, 0));
        again.stop();
        let kept = recovery::examples(torn.path(), "a").unwrap();
        assert_eq!(
            kept.iter().map(|e| e.input[0]).collect::<Vec<_>>(),
            [0.0, 1.0]
        );
        // The first record's header, right after the segment's header.
        zero(
            &segments(hidden.path())[0],
            segment::MAGIC.len() as u64,
            record::FRAME_HEADER,
        );
        let (again, recovered) = Running::start(hidden.path(), 1 << 20);
        assert_eq!(found(&recovered), (0, false, 1));
        again.stop();
    }

    /// A record cut short at the end of the newest segment (a crash mid-write) is cut off at
    /// recovery; everything before it is kept and new records follow it.
    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (running, _) = Running::start(dir.path(), 1 << 20);
        for i in 0..3u32 {
            let ack = running
                .log
                .reward(RewardRecord {
                    model: "a".into(),
                    decision_id: format!("d{i}"),
                    at_ms: 1,
                    regret: None,
                    example: Some(ExampleRecord {
                        input: vec![i as f32],
                        head: 0,
                        reward: 1.0,
                    }),
                })
                .unwrap();
            ack.blocking_recv().unwrap().unwrap();
        }
        running.stop();
        let segment = segment::list(&segment::dir(dir.path())).unwrap()[0]
            .1
            .clone();
        let len = fs::metadata(&segment).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (running, recovered) = Running::start(dir.path(), 1 << 20);
        assert_eq!(found(&recovered), (2, true, 0));
        running.stop();
        let kept = recovery::examples(dir.path(), "a").unwrap();
        assert_eq!(
            kept.iter().map(|e| e.input[0]).collect::<Vec<_>>(),
            [0.0, 1.0]
        );
    }
}
