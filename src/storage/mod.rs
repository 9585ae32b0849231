//! Durability: the decision and reward log (redb), model checkpoints, and recovery.
//!
//! # The log
//! One redb database, `<data_dir>/log.redb`, with two tables per model:
//! - `decisions/<model>`: decision id -> the decision as JSON (context, candidates, chosen arm,
//!   scores, model version, timestamps, the reward once it arrives, and how it closed);
//! - `examples/<model>`: sequence number -> a training example (network input, head, reward).
//!   The learner trains on exactly these, in sequence order, and checkpoints record the last
//!   sequence number they cover.
//!
//! redb is an embedded store with ACID, crash-safe commits and a stable file format; sled,
//! the other candidate, is still beta. One writer thread owns all writes and commits them in
//! groups: every operation waiting when a commit starts goes into it, so one fsync covers many
//! acknowledgements (group commit), and durability does not cap throughput.
//!
//! # What each durability mode promises
//! - `fsync` (default): a reward is acknowledged only after the commit holding it has been
//!   fsynced. It survives `kill -9` and power loss.
//! - `periodic`: commits are written without fsync and a fsynced commit follows at least every
//!   `sync_interval_ms`. On a crash, redb rolls back to the last fsynced commit, so rewards
//!   acknowledged in the last interval may be lost. Faster acknowledgements.
//!
//! Decisions travel through the same writer in order. `ChooseArm` does not wait for its
//! decision's commit unless `sync_decisions` is set: the decision is in the next group commit
//! (a few milliseconds), and because commits are ordered, every decision answered before an
//! acknowledged reward was sent is durable once that reward is acknowledged. On a clean
//! shutdown everything is flushed.

pub mod checkpoint;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    config::{DurabilityMode, StorageConfig},
    decisions::Decision,
    error::Error,
    learner::{Example, LearnerHandle},
    metrics,
};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A candidate as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedCandidate {
    /// Arm id.
    pub id: String,
    /// Its features (empty for fixed-arm models).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<f32>,
}

/// How a decision's wait for its reward ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// The window closed after a reward arrived.
    Rewarded,
    /// The window closed without a reward; the default reward was trained on.
    Defaulted,
    /// The window closed without a reward and there was no default.
    Dropped,
    /// Evicted from a full pending store.
    Evicted,
}

/// One logged decision (and its reward once known): a line of the export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRow {
    /// The model.
    pub model: String,
    /// The decision id.
    pub decision_id: String,
    /// When it was decided, ms since the Unix epoch.
    pub decided_ms: u64,
    /// The request's context.
    pub context: Vec<f32>,
    /// The scored candidates (excluded ones are not listed).
    pub candidates: Vec<LoggedCandidate>,
    /// The chosen arm.
    pub arm_id: String,
    /// Each scored candidate's sampled expected reward, in candidate order.
    pub scores: Vec<f64>,
    /// The weights version that decided.
    pub model_version: u64,
    /// The network input trained on when the reward arrives.
    pub input: Vec<f32>,
    /// The output head trained.
    pub head: u32,
    /// The probability the policy had of choosing `arm_id`, when it was known (exact for the
    /// baselines, estimated from posterior samples for the Thompson policies when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propensity: Option<f64>,
    /// The reward, once reported (or the default reward, if it closed as `defaulted`).
    pub reward: Option<f64>,
    /// When the reward was reported, ms since the Unix epoch.
    pub reward_ms: Option<u64>,
    /// The regret reported with the reward, if any.
    pub regret: Option<f64>,
    /// How the wait ended; `None` while pending.
    pub closed: Option<Closed>,
}

/// One logged training example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ExampleRow {
    decision_id: String,
    input: Vec<f32>,
    head: u32,
    reward: f64,
    at_ms: u64,
}

fn decisions_table(model: &str) -> String {
    format!("decisions/{model}")
}

fn examples_table(model: &str) -> String {
    format!("examples/{model}")
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("log: {e}"))
}

/// Acknowledgement of a write: `Ok` once committed under the configured durability.
pub type Ack = oneshot::Receiver<Result<(), Error>>;
/// The writer's side of an [`Ack`].
type AckTx = oneshot::Sender<Result<(), Error>>;

enum Op {
    Decision(Box<DecisionRow>, Option<AckTx>),
    Reward {
        model: String,
        decision: Arc<Decision>,
        reward: f64,
        regret: Option<f64>,
        at_ms: u64,
        ack: AckTx,
    },
    Close {
        model: String,
        decision_id: String,
        closed: Closed,
        default_reward: Option<f64>,
    },
    Flush(AckTx),
    Shutdown,
}

/// What `ChooseArm` does when the log writer's queue is full (`storage.on_log_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLogFull {
    /// Refuse the decision with RESOURCE_EXHAUSTED (and retry info): every decision served is
    /// in the log, as the durability promises say.
    Reject,
    /// Serve the decision without logging it (counted in `banditd_decisions_unlogged_total`):
    /// its reward still trains, but the log lacks its context and candidates, and it is lost
    /// on a restart.
    Serve,
}

/// The cloneable handle request handlers use to log.
#[derive(Debug, Clone)]
pub struct Log {
    /// Bounded; the writer thread holds the receiver. Full = RESOURCE_EXHAUSTED for rewards
    /// (and for decisions under [`OnLogFull::Reject`]).
    tx: Sender<Op>,
    sync_decisions: bool,
    on_full: OnLogFull,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Decision(..) => "Decision",
            Self::Reward { .. } => "Reward",
            Self::Close { .. } => "Close",
            Self::Flush(_) => "Flush",
            Self::Shutdown => "Shutdown",
        })
    }
}

impl Log {
    /// Queues a decision. Returns an acknowledgement to await when `sync_decisions` is set.
    ///
    /// # Errors
    /// The writer queue is full or the writer has stopped.
    pub fn decision(&self, row: DecisionRow) -> Result<Option<Ack>, Error> {
        let (ack, rx) = if self.sync_decisions {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.send(Op::Decision(Box::new(row), ack))?;
        Ok(rx)
    }

    /// Queues a reward for `decision_id`; the acknowledgement resolves once it is durable
    /// (and handed to the learner).
    ///
    /// # Errors
    /// The writer queue is full or the writer has stopped.
    pub fn reward(
        &self,
        model: &str,
        decision: &Arc<Decision>,
        reward: f64,
        regret: Option<f64>,
    ) -> Result<Ack, Error> {
        let (ack, rx) = oneshot::channel();
        self.send(Op::Reward {
            model: model.to_owned(),
            decision: Arc::clone(decision),
            reward,
            regret,
            at_ms: now_ms(),
            ack,
        })?;
        Ok(rx)
    }

    /// Queues the closing of a decision's window (with the default reward to train on, if any).
    ///
    /// # Errors
    /// The writer queue is full or the writer has stopped.
    pub fn close(
        &self,
        model: &str,
        decision_id: &str,
        closed: Closed,
        default_reward: Option<f64>,
    ) -> Result<(), Error> {
        self.send(Op::Close {
            model: model.to_owned(),
            decision_id: decision_id.to_owned(),
            closed,
            default_reward,
        })
    }

    /// Whether `ChooseArm` waits for its decision's commit.
    pub fn sync_decisions(&self) -> bool {
        self.sync_decisions
    }

    /// What `ChooseArm` does when the queue is full.
    pub fn on_full(&self) -> OnLogFull {
        self.on_full
    }

    /// Whether the writer's queue is full now (a hint: it may change at once).
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }

    /// Asks the writer to commit (fsynced) everything queued and exit; waits for room in
    /// the queue if it is full.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Op::Shutdown);
    }

    /// Resolves once everything queued before it is committed and fsynced.
    ///
    /// # Errors
    /// The writer has stopped.
    pub fn flush(&self) -> Result<Ack, Error> {
        let (ack, rx) = oneshot::channel();
        self.send(Op::Flush(ack))?;
        Ok(rx)
    }

    fn send(&self, op: Op) -> Result<(), Error> {
        match self.tx.try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded("log writer queue")),
            Err(TrySendError::Disconnected(_)) => {
                Err(Error::Unavailable("log writer stopped".into()))
            }
        }
    }
}

/// What the log holds for one model at startup.
#[derive(Debug, Default)]
pub struct ModelRecovery {
    /// Decisions whose window had not closed, with their reward if one arrived.
    pub pending: Vec<DecisionRow>,
    /// Examples in sequence order, oldest first (the last `replay_capacity` at most of those
    /// up to the checkpoint, then every one after it).
    pub examples: Vec<Example>,
    /// The highest weights version any logged decision was made with.
    pub max_version: u64,
    /// The next example sequence number.
    pub next_seq: u64,
}

/// The open log database.
#[derive(Debug)]
pub struct Storage {
    db: Arc<Database>,
    config: StorageConfig,
}

impl Storage {
    /// Opens (or creates) `<data_dir>/log.redb`. A file redb cannot open as a database is
    /// moved aside to `log.redb.corrupt-<ms>` (and reported) so the service still starts.
    ///
    /// # Errors
    /// The data directory cannot be created, or the database is locked by another process.
    pub fn open(config: &StorageConfig) -> Result<Self, Error> {
        fs::create_dir_all(&config.data_dir).map_err(|e| {
            Error::Internal(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let path = config.data_dir.join("log.redb");
        let cache = config.cache_mib.max(1).saturating_mul(1024 * 1024);
        let create = |path: &Path| Database::builder().set_cache_size(cache).create(path);
        let db = match create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::Internal(format!(
                    "{} is in use by another banditd process",
                    path.display()
                )));
            }
            Err(e) => {
                let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now_ms()));
                tracing::error!(error = %e, moved_to = %aside.display(), "the log cannot be opened; moving it aside and starting a new one");
                metrics::recovery_skipped("log", 1);
                fs::rename(&path, &aside).map_err(db_err)?;
                create(&path).map_err(db_err)?
            }
        };
        Ok(Self {
            db: Arc::new(db),
            config: config.clone(),
        })
    }

    /// Starts a new epoch: increments the durable start counter and returns it (1 on the
    /// first start). Model versions are `epoch × 2^32 + publishes`, so they never go
    /// backwards across restarts, even after a crash lost the newest log entries.
    ///
    /// # Errors
    /// A storage failure.
    pub fn begin_epoch(&self) -> Result<u64, Error> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let epoch = {
            let mut table = txn
                .open_table(TableDefinition::<&str, u64>::new("meta"))
                .map_err(db_err)?;
            let epoch = table.get("epoch").map_err(db_err)?.map_or(0, |v| v.value()) + 1;
            table.insert("epoch", epoch).map_err(db_err)?;
            epoch
        };
        txn.commit().map_err(db_err)?;
        Ok(epoch)
    }

    /// Reads what `model` needs to resume: pending decisions, the examples after the
    /// checkpoint at `checkpoint_seq` (plus up to `replay_capacity` before it), the highest
    /// version served. Unreadable rows are skipped and counted.
    ///
    /// # Errors
    /// A storage failure.
    pub fn recover(
        &self,
        model: &str,
        checkpoint_seq: Option<u64>,
        replay_capacity: usize,
    ) -> Result<ModelRecovery, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut out = ModelRecovery::default();
        let mut unreadable = 0u64;
        let dname = decisions_table(model);
        match txn.open_table(TableDefinition::<&str, &[u8]>::new(&dname)) {
            Ok(table) => {
                for entry in table.iter().map_err(db_err)? {
                    let (_, value) = entry.map_err(db_err)?;
                    match serde_json::from_slice::<DecisionRow>(value.value()) {
                        Ok(row) => {
                            out.max_version = out.max_version.max(row.model_version);
                            if row.closed.is_none() {
                                out.pending.push(row);
                            }
                        }
                        Err(_) => unreadable += 1,
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(e)),
        }
        out.pending.sort_by_key(|r| r.decided_ms);
        let ename = examples_table(model);
        match txn.open_table(TableDefinition::<u64, &[u8]>::new(&ename)) {
            Ok(table) => {
                if let Some(last) = table.last().map_err(db_err)? {
                    out.next_seq = last.0.value() + 1;
                }
                let after = checkpoint_seq.map_or(0, |s| s + 1);
                // The replay window before the checkpoint, then everything after it.
                let mut before: Vec<Example> = Vec::new();
                for entry in table
                    .range(..after)
                    .map_err(db_err)?
                    .rev()
                    .take(replay_capacity)
                {
                    let (k, v) = entry.map_err(db_err)?;
                    match example_from(k.value(), v.value()) {
                        Some(e) => before.push(e),
                        None => unreadable += 1,
                    }
                }
                before.reverse();
                out.examples = before;
                for entry in table.range(after..).map_err(db_err)? {
                    let (k, v) = entry.map_err(db_err)?;
                    match example_from(k.value(), v.value()) {
                        Some(e) => out.examples.push(e),
                        None => unreadable += 1,
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(db_err(e)),
        }
        if unreadable > 0 {
            tracing::warn!(model, unreadable, "skipped unreadable log rows");
            metrics::recovery_skipped("log_row", unreadable);
        }
        Ok(out)
    }

    /// Starts the writer thread. `learners` receive each committed example, in order;
    /// `next_seq` gives each model's next example sequence number.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn start_writer(
        &self,
        learners: HashMap<String, LearnerHandle>,
        next_seq: HashMap<String, u64>,
    ) -> Result<(Log, LogWriter), Error> {
        let (tx, rx) = crossbeam_channel::bounded(self.config.writer_queue_capacity);
        let writer = Writer {
            db: Arc::clone(&self.db),
            mode: self.config.durability,
            sync_interval: Duration::from_millis(self.config.sync_interval_ms),
            retention: Duration::from_secs(self.config.retention_hours.saturating_mul(3600)),
            learners,
            next_seq,
            rx,
            last_sync: Instant::now(),
            unsynced: false,
            last_compaction: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Internal(format!("cannot spawn log writer: {e}")))?;
        Ok((
            Log {
                tx,
                sync_decisions: self.config.sync_decisions,
                on_full: self.config.on_log_full,
            },
            LogWriter {
                thread: Some(thread),
            },
        ))
    }

    /// Every logged decision of `model` (or of all models), in decision-time order.
    ///
    /// # Errors
    /// A storage failure.
    pub fn export(&self, models: &[String]) -> Result<Vec<DecisionRow>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let mut rows = Vec::new();
        for model in models {
            let name = decisions_table(model);
            match txn.open_table(TableDefinition::<&str, &[u8]>::new(&name)) {
                Ok(table) => {
                    for entry in table.iter().map_err(db_err)? {
                        let (_, v) = entry.map_err(db_err)?;
                        if let Ok(row) = serde_json::from_slice::<DecisionRow>(v.value()) {
                            rows.push(row);
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(db_err(e)),
            }
        }
        rows.sort_by_key(|r| r.decided_ms);
        Ok(rows)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }
}

fn example_from(seq: u64, bytes: &[u8]) -> Option<Example> {
    let row: ExampleRow = serde_json::from_slice(bytes).ok()?;
    Some(Example {
        input: row.input,
        head: row.head,
        reward: row.reward,
        seq,
    })
}

/// Owns the writer thread; [`LogWriter::shutdown`] flushes and joins it once every [`Log`]
/// handle is gone (dropping it joins only a writer that has already stopped).
#[derive(Debug)]
pub struct LogWriter {
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Waits for the writer to commit what is queued and exit. Every [`Log`] clone must have
    /// been dropped first (the writer stops when its queue disconnects).
    pub fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("log writer panicked");
        }
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Dropped without `Background::shutdown` (a cancelled `run`, e.g. in a test that
        // panicked), the `Log` handles may still be alive and joining would wait for them
        // forever; the writer stops on its own once they are gone.
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            self.shutdown();
        }
    }
}

/// Most operations folded into one commit.
const MAX_GROUP: usize = 4096;
/// How often closed decisions and old examples are compacted away.
const COMPACTION_PERIOD: Duration = Duration::from_secs(600);

struct Writer {
    db: Arc<Database>,
    mode: DurabilityMode,
    sync_interval: Duration,
    retention: Duration,
    learners: HashMap<String, LearnerHandle>,
    next_seq: HashMap<String, u64>,
    rx: Receiver<Op>,
    last_sync: Instant,
    unsynced: bool,
    last_compaction: Instant,
}

/// The effects of one group commit, applied after it succeeds.
#[derive(Default)]
struct Committed {
    examples: Vec<(String, Example)>,
    acks: Vec<(AckTx, Result<(), Error>)>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(self.sync_interval) {
                Ok(op) => op,
                Err(RecvTimeoutError::Timeout) => {
                    if self.unsynced
                        && let Err(e) = self.commit_group(Vec::new(), true)
                    {
                        tracing::error!(error = %e, "periodic log sync failed");
                    }
                    self.maybe_compact();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut ops = vec![first];
            ops.extend(self.rx.try_iter().take(MAX_GROUP - 1));
            // Nothing after a shutdown request is taken (there should be nothing: serving
            // has stopped); what is before it is committed.
            let stop = ops.iter().position(|op| matches!(op, Op::Shutdown));
            if let Some(at) = stop {
                ops.truncate(at);
            }
            let force_sync = stop.is_some() || ops.iter().any(|op| matches!(op, Op::Flush(_)));
            if let Err(e) = self.commit_group(ops, force_sync) {
                tracing::error!(error = %e, "log commit failed");
            }
            if stop.is_some() {
                break;
            }
            self.maybe_compact();
        }
        if self.unsynced
            && let Err(e) = self.commit_group(Vec::new(), true)
        {
            tracing::error!(error = %e, "final log sync failed");
        }
        tracing::debug!("log writer stopped");
    }

    /// Applies `ops` in one write transaction and commits it; then hands the new examples to
    /// the learners and acknowledges. On failure every waiter gets the error.
    fn commit_group(&mut self, ops: Vec<Op>, force_sync: bool) -> Result<(), Error> {
        let sync = force_sync
            || self.mode == DurabilityMode::Fsync
            || self.last_sync.elapsed() >= self.sync_interval;
        let mut committed = Committed::default();
        let mut waiters = Vec::new();
        let result = (|| -> Result<(), Error> {
            let mut txn = self.db.begin_write().map_err(db_err)?;
            txn.set_durability(if sync {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(db_err)?;
            for op in ops {
                self.apply(&txn, op, &mut committed, &mut waiters)?;
            }
            txn.commit().map_err(db_err)
        })();
        match result {
            Ok(()) => {
                if sync {
                    self.last_sync = Instant::now();
                    self.unsynced = false;
                } else {
                    self.unsynced = true;
                }
                // Acknowledge first: durability is what the client waits for; handing the
                // examples over may wait for a busy learner.
                for (ack, r) in committed.acks {
                    let _ = ack.send(r);
                }
                // Flush requests: everything before them is now committed (and fsynced).
                for ack in waiters {
                    let _ = ack.send(Ok(()));
                }
                for (model, example) in committed.examples {
                    if let Some(learner) = self.learners.get(&model) {
                        learner.send(example);
                    }
                }
                Ok(())
            }
            Err(e) => {
                // Nothing of this group is durable: undo the sequence numbers it took.
                for (model, example) in &committed.examples {
                    let next = self.next_seq.entry(model.clone()).or_default();
                    *next = (*next).min(example.seq);
                }
                for ack in waiters
                    .into_iter()
                    .chain(committed.acks.into_iter().map(|(a, _)| a))
                {
                    let _ = ack.send(Err(Error::Internal(
                        "log commit failed; see the server log".into(),
                    )));
                }
                Err(e)
            }
        }
    }

    fn apply(
        &mut self,
        txn: &redb::WriteTransaction,
        op: Op,
        out: &mut Committed,
        waiters: &mut Vec<AckTx>,
    ) -> Result<(), Error> {
        match op {
            Op::Decision(row, ack) => {
                let name = decisions_table(&row.model);
                let mut table = txn
                    .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                    .map_err(db_err)?;
                let bytes = serde_json::to_vec(&row).map_err(db_err)?;
                table
                    .insert(row.decision_id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
                if let Some(ack) = ack {
                    out.acks.push((ack, Ok(())));
                }
            }
            Op::Reward {
                model,
                decision,
                reward,
                regret,
                at_ms,
                ack,
            } => {
                // A decision answered while the writer queue was full was never logged: log
                // what the pending store kept of it (no context or candidate features).
                let mut row = match self.read_decision(txn, &model, &decision.id)? {
                    Some(row) => row,
                    None => DecisionRow {
                        model: model.clone(),
                        decision_id: decision.id.clone(),
                        decided_ms: at_ms,
                        context: Vec::new(),
                        candidates: decision
                            .scores
                            .iter()
                            .map(|(id, _)| LoggedCandidate {
                                id: id.clone(),
                                features: Vec::new(),
                            })
                            .collect(),
                        arm_id: decision.arm_id.clone(),
                        scores: decision.scores.iter().map(|(_, s)| *s).collect(),
                        model_version: decision.model_version,
                        propensity: decision.propensity,
                        input: decision.input.clone(),
                        head: decision.head,
                        reward: None,
                        reward_ms: None,
                        regret: None,
                        closed: None,
                    },
                };
                row.reward = Some(reward);
                row.reward_ms = Some(at_ms);
                row.regret = regret;
                let example = self.append_example(txn, &model, &row, reward, at_ms)?;
                self.write_decision(txn, &row)?;
                out.examples.push((model, example));
                out.acks.push((ack, Ok(())));
            }
            Op::Close {
                model,
                decision_id,
                closed,
                default_reward,
            } => {
                let Some(mut row) = self.read_decision(txn, &model, &decision_id)? else {
                    return Ok(());
                };
                row.closed = Some(closed);
                if let (Closed::Defaulted, Some(reward)) = (closed, default_reward) {
                    let at_ms = now_ms();
                    row.reward = Some(reward);
                    row.reward_ms = Some(at_ms);
                    let example = self.append_example(txn, &model, &row, reward, at_ms)?;
                    out.examples.push((model, example));
                }
                self.write_decision(txn, &row)?;
            }
            Op::Flush(ack) => waiters.push(ack),
            Op::Shutdown => {}
        }
        Ok(())
    }

    fn read_decision(
        &self,
        txn: &redb::WriteTransaction,
        model: &str,
        id: &str,
    ) -> Result<Option<DecisionRow>, Error> {
        let name = decisions_table(model);
        let table = txn
            .open_table(TableDefinition::<&str, &[u8]>::new(&name))
            .map_err(db_err)?;
        let row = table
            .get(id)
            .map_err(db_err)?
            .and_then(|v| serde_json::from_slice(v.value()).ok());
        Ok(row)
    }

    fn write_decision(&self, txn: &redb::WriteTransaction, row: &DecisionRow) -> Result<(), Error> {
        let name = decisions_table(&row.model);
        let mut table = txn
            .open_table(TableDefinition::<&str, &[u8]>::new(&name))
            .map_err(db_err)?;
        let bytes = serde_json::to_vec(row).map_err(db_err)?;
        table
            .insert(row.decision_id.as_str(), bytes.as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    fn append_example(
        &mut self,
        txn: &redb::WriteTransaction,
        model: &str,
        row: &DecisionRow,
        reward: f64,
        at_ms: u64,
    ) -> Result<Example, Error> {
        let seq = {
            let next = self.next_seq.entry(model.to_owned()).or_default();
            let seq = *next;
            *next += 1;
            seq
        };
        let example_row = ExampleRow {
            decision_id: row.decision_id.clone(),
            input: row.input.clone(),
            head: row.head,
            reward,
            at_ms,
        };
        let name = examples_table(model);
        let mut table = txn
            .open_table(TableDefinition::<u64, &[u8]>::new(&name))
            .map_err(db_err)?;
        let bytes = serde_json::to_vec(&example_row).map_err(db_err)?;
        table.insert(seq, bytes.as_slice()).map_err(db_err)?;
        Ok(Example {
            input: example_row.input,
            head: row.head,
            reward,
            seq,
        })
    }

    /// Deletes closed decisions and examples older than the retention, keeping every example
    /// a learner's latest checkpoint does not yet cover plus its replay window.
    fn maybe_compact(&mut self) {
        if self.last_compaction.elapsed() < COMPACTION_PERIOD {
            return;
        }
        self.last_compaction = Instant::now();
        if let Err(e) = self.compact() {
            tracing::error!(error = %e, "log compaction failed");
        }
    }

    fn compact(&mut self) -> Result<(), Error> {
        let cutoff =
            now_ms().saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        let mut removed = 0u64;
        for (model, learner) in &self.learners {
            let name = decisions_table(model);
            let mut table = txn
                .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                .map_err(db_err)?;
            let before = table.len().map_err(db_err)?;
            table
                .retain(|_, v| match serde_json::from_slice::<DecisionRow>(v) {
                    Ok(row) => row.closed.is_none() || row.decided_ms >= cutoff,
                    Err(_) => false,
                })
                .map_err(db_err)?;
            removed += before - table.len().map_err(db_err)?;
            let safe = learner
                .checkpoint_seq()
                .map_or(0, |s| s.saturating_sub(learner.replay_capacity() as u64));
            let name = examples_table(model);
            let mut table = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(&name))
                .map_err(db_err)?;
            let before = table.len().map_err(db_err)?;
            table
                .retain_in(..safe, |_, v| {
                    serde_json::from_slice::<ExampleRow>(v).is_ok_and(|r| r.at_ms >= cutoff)
                })
                .map_err(db_err)?;
            removed += before - table.len().map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        self.last_sync = Instant::now();
        self.unsynced = false;
        tracing::info!(removed, "log compacted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Replaying the log reproduces the live state: a random sequence of decisions, rewards,
    //! window closings and restarts is written through a real [`Storage`], mirrored in a plain
    //! in-memory model, and [`Storage::recover`] must give back the model's pending decisions
    //! and examples for any checkpoint position and replay capacity.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::config::{DurabilityMode, StorageConfig};

    const MODELS: [&str; 2] = ["a", "b"];

    #[derive(Debug, Clone)]
    enum Step {
        /// A new decision of model `MODELS[model]`, made with weights `version`.
        Decide { model: usize, version: u64 },
        /// A reward for an earlier decision (picked by index), as the pending store allows.
        Reward {
            pick: prop::sample::Index,
            value: f64,
        },
        /// Its window closes (or it is evicted), as the expiry sweep / eviction would log it.
        Close {
            pick: prop::sample::Index,
            how: u8,
            default: Option<f64>,
        },
        /// The process stops cleanly and starts again on the same directory.
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

    /// One decision as the in-memory model sees it.
    #[derive(Debug, Clone)]
    struct Modelled {
        model: &'static str,
        id: String,
        decided_ms: u64,
        version: u64,
        input: Vec<f32>,
        head: u32,
        reward: Option<f64>,
        closed: Option<Closed>,
    }

    /// The live process as plain data: every decision, and each model's examples in order.
    #[derive(Debug, Default)]
    struct Expected {
        decisions: Vec<Modelled>,
        examples: BTreeMap<&'static str, Vec<Example>>,
        next_seq: BTreeMap<&'static str, u64>,
    }

    impl Expected {
        fn example(&mut self, d: &Modelled, reward: f64) {
            let next = self.next_seq.entry(d.model).or_insert(1);
            self.examples.entry(d.model).or_default().push(Example {
                input: d.input.clone(),
                head: d.head,
                reward,
                seq: *next,
            });
            *next += 1;
        }
    }

    fn open(dir: &Path) -> Storage {
        Storage::open(&StorageConfig {
            data_dir: dir.to_owned(),
            durability: DurabilityMode::Periodic,
            sync_interval_ms: 1_000,
            ..StorageConfig::default()
        })
        .unwrap()
    }

    /// A started writer; dropping it stops it cleanly (also when a case fails half-way: a
    /// [`LogWriter`] dropped while its [`Log`] is alive would wait for it forever).
    struct Running {
        log: Log,
        writer: LogWriter,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.log.shutdown();
            self.writer.shutdown();
        }
    }

    /// Starts the writer the way the engine does without a checkpoint: each model's next
    /// sequence number from recovery (1 for an empty log), and no learners (committed examples
    /// of models without one are not handed on).
    fn start(storage: &Storage) -> Running {
        let next_seq = MODELS
            .iter()
            .map(|m| {
                let next = storage
                    .recover(m, None, usize::MAX)
                    .unwrap()
                    .next_seq
                    .max(1);
                ((*m).to_owned(), next)
            })
            .collect();
        let (log, writer) = storage.start_writer(HashMap::new(), next_seq).unwrap();
        Running { log, writer }
    }

    fn row(d: &Modelled) -> DecisionRow {
        DecisionRow {
            model: d.model.to_owned(),
            decision_id: d.id.clone(),
            decided_ms: d.decided_ms,
            context: d.input.clone(),
            candidates: vec![LoggedCandidate {
                id: d.head.to_string(),
                features: Vec::new(),
            }],
            arm_id: d.head.to_string(),
            scores: vec![0.5],
            model_version: d.version,
            input: d.input.clone(),
            head: d.head,
            propensity: None,
            reward: None,
            reward_ms: None,
            regret: None,
            closed: None,
        }
    }

    fn live(d: &Modelled) -> Arc<Decision> {
        Arc::new(Decision {
            id: d.id.clone(),
            arm_id: d.head.to_string(),
            scores: vec![(d.head.to_string(), 0.5)],
            model_version: d.version,
            input: d.input.clone(),
            head: d.head,
            propensity: None,
            explanation: None,
        })
    }

    /// `recover` for `model` at `checkpoint_seq` with `capacity` equals the model's state.
    fn check(
        storage: &Storage,
        expected: &Expected,
        model: &'static str,
        checkpoint_seq: Option<u64>,
        capacity: usize,
    ) -> Result<(), TestCaseError> {
        let got = storage.recover(model, checkpoint_seq, capacity).unwrap();
        let mut pending: Vec<&Modelled> = expected
            .decisions
            .iter()
            .filter(|d| d.model == model && d.closed.is_none())
            .collect();
        pending.sort_by_key(|d| d.decided_ms);
        let want: Vec<(String, Option<f64>, Vec<f32>, u32)> = pending
            .iter()
            .map(|d| (d.id.clone(), d.reward, d.input.clone(), d.head))
            .collect();
        let have: Vec<(String, Option<f64>, Vec<f32>, u32)> = got
            .pending
            .iter()
            .map(|r| (r.decision_id.clone(), r.reward, r.input.clone(), r.head))
            .collect();
        prop_assert_eq!(have, want, "pending of {} at {:?}", model, checkpoint_seq);
        let all = expected.examples.get(model).cloned().unwrap_or_default();
        let after = checkpoint_seq.map_or(0, |s| s + 1);
        let before: Vec<Example> = all.iter().filter(|e| e.seq < after).cloned().collect();
        let mut want: Vec<Example> = before[before.len().saturating_sub(capacity)..].to_vec();
        want.extend(all.iter().filter(|e| e.seq >= after).cloned());
        prop_assert_eq!(
            &got.examples,
            &want,
            "examples of {} at {:?}, capacity {}",
            model,
            checkpoint_seq,
            capacity
        );
        let max_version = expected
            .decisions
            .iter()
            .filter(|d| d.model == model)
            .map(|d| d.version)
            .max()
            .unwrap_or(0);
        prop_assert_eq!(got.max_version, max_version, "max_version of {}", model);
        prop_assert_eq!(
            got.next_seq,
            all.last().map_or(0, |e| e.seq + 1),
            "next_seq of {}",
            model
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 32,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Replaying the log from any checkpoint position reproduces the live process's
        /// pending decisions (with their rewards) and its example sequence.
        #[test]
        fn recovery_replays_the_live_state(steps in prop::collection::vec(step(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let mut storage = open(dir.path());
            let mut running = start(&storage);
            let mut expected = Expected::default();
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Decide { model, version } => {
                        let n = expected.decisions.len();
                        let d = Modelled {
                            model: MODELS[model],
                            id: format!("d{n}"),
                            decided_ms: 1_000 + i as u64,
                            version,
                            input: vec![n as f32, -(i as f32)],
                            head: (n % 3) as u32,
                            reward: None,
                            closed: None,
                        };
                        prop_assert!(running.log.decision(row(&d)).unwrap().is_none());
                        expected.decisions.push(d);
                    }
                    Step::Reward { pick, value } => {
                        if expected.decisions.is_empty() {
                            continue;
                        }
                        let k = pick.index(expected.decisions.len());
                        let d = expected.decisions[k].clone();
                        // The pending store takes a first reward for an open decision only.
                        if d.closed.is_some() || d.reward.is_some() {
                            continue;
                        }
                        let ack = running.log.reward(d.model, &live(&d), value, None).unwrap();
                        prop_assert!(ack.blocking_recv().unwrap().is_ok());
                        expected.decisions[k].reward = Some(value);
                        expected.example(&d, value);
                    }
                    Step::Close { pick, how, default } => {
                        if expected.decisions.is_empty() {
                            continue;
                        }
                        let k = pick.index(expected.decisions.len());
                        let d = expected.decisions[k].clone();
                        if d.closed.is_some() {
                            continue;
                        }
                        // What `Engine::expire` (or eviction) logs for this decision.
                        let (closed, default) = match (how, d.reward) {
                            (0, _) => (Closed::Evicted, None),
                            (_, Some(_)) => (Closed::Rewarded, None),
                            (_, None) if default.is_some() => (Closed::Defaulted, default),
                            (_, None) => (Closed::Dropped, None),
                        };
                        running.log.close(d.model, &d.id, closed, default).unwrap();
                        expected.decisions[k].closed = Some(closed);
                        if let (Closed::Defaulted, Some(r)) = (closed, default) {
                            expected.decisions[k].reward = Some(r);
                            expected.example(&d, r);
                        }
                    }
                    Step::Restart => {
                        drop(running);
                        drop(storage);
                        storage = open(dir.path());
                        for model in MODELS {
                            check(&storage, &expected, model, None, usize::MAX)?;
                        }
                        running = start(&storage);
                    }
                }
            }
            flush(&running.log);
            for model in MODELS {
                let last = expected.examples.get(model).and_then(|e| e.last()).map(|e| e.seq);
                let mut positions = vec![None, Some(0)];
                if let Some(last) = last {
                    positions.extend([Some(last / 2), Some(last.saturating_sub(1)), Some(last), Some(last + 5)]);
                }
                for checkpoint_seq in positions {
                    for capacity in [0, 1, 3, usize::MAX] {
                        check(&storage, &expected, model, checkpoint_seq, capacity)?;
                    }
                }
            }
            drop(running);
        }
    }

    /// Waits for everything queued on `log` to be committed and fsynced.
    fn flush(log: &Log) {
        log.flush().unwrap().blocking_recv().unwrap().unwrap();
    }
}
