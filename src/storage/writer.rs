//! The log writer: one thread owns the open segment and appends every event in group commits.
//!
//! Request handlers queue records on a bounded channel ([`Log`]); the writer takes everything
//! waiting, encodes it into one buffer, writes it with one `write`, fsyncs per the durability
//! mode, then moves the committed watermark and acknowledges. A commit wakes the
//! [`Tail`](super::Tail) of each model it holds a training example for (a reward, a closed
//! decision with a default reward), and no other: a decision is no example, so under
//! decision-only load the learners sleep until their idle timeout instead of each waking on
//! every commit, and a server of many models does not wake them all per commit. The writer
//! also tells each tail where its model's examples end ([`Signal`]), so that a tail skips
//! the records in between unread (learner threads: 0.7 µs per decision to 0.0 for two
//! models, BENCHMARKS.md "Serving cost").
//!
//! Waking the writer costs a futex call on the request's thread and a context switch on the
//! writer's, so only a record someone waits on (a reward, a synced decision, a flush) wakes
//! it at once. After a commit of records nobody waits for,
//! the writer lets `storage.commit_delay_us` pass before it takes the next group, so the
//! decisions gather meanwhile and go out in one write; when it has nothing to do it sleeps
//! until the next record arrives. While rewards flow it waits on the channel as before.
//! Under decision-only load that turned one write and one wake-up per one or two decisions
//! into one per millisecond (BENCHMARKS.md, "Serving cost").
//!
//! Nothing is ever rewritten: a reward is a new record, not an update of its decision's. When
//! the segment passes `storage.segment_bytes` a new one is started; retention deletes whole
//! old segments.
//!
//! The segment is zero-filled `storage.preallocate_bytes` ahead of the frames, so that most
//! groups overwrite zeros inside the file instead of growing it: an `fdatasync` then has no
//! new file size to commit to the file system's journal (measured on ext4: 46 instead of
//! 64–70 µs of CPU per 2 KB write + `fdatasync`, and the writer's CPU per round at 1000
//! rounds/s in fsync mode 82.5 instead of 96.5 µs; PostgreSQL preallocates its WAL for the
//! same reason). The zeros are cut off when a segment is sealed
//! or the writer stops; after a crash, readers stop at them (see [`segment`]).
//!
//! A failed write (a full disk, an I/O error) is cut back to the last committed byte, every
//! waiter in the group gets UNAVAILABLE, and the log is marked failing until a later write
//! succeeds: the writer retries by itself, and handlers refuse new work meanwhile.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering, fence},
    },
    thread::{JoinHandle, Thread},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

use super::{
    record::{ClosedRecord, DecisionRecord, Record, RewardRecord},
    segment,
};
use crate::{
    config::{DurabilityMode, OnLogFull, StorageConfig, StorageFaults},
    error::Error,
    metrics,
};

/// Acknowledgement of a write: `Ok` once committed under the configured durability.
pub type Ack = oneshot::Receiver<Result<(), Error>>;
/// The writer's side of an [`Ack`].
type AckTx = oneshot::Sender<Result<(), Error>>;

enum Op {
    Decision(Box<DecisionRecord>, Option<AckTx>),
    Reward(Box<RewardRecord>, AckTx),
    Closed(Box<ClosedRecord>),
    Flush(AckTx),
    Shutdown,
}

impl Op {
    /// Whether someone waits for this operation's commit, so that the writer must take it
    /// at once rather than after its commit delay.
    fn waited_on(&self) -> bool {
        match self {
            Self::Decision(_, ack) => ack.is_some(),
            Self::Reward(..) | Self::Flush(_) | Self::Shutdown => true,
            Self::Closed(_) => false,
        }
    }
}

/// How far the log is committed: every record below `lsn_end` is written (and fsynced, in
/// `fsync` mode), and the newest segment is valid up to byte `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    /// One past the last committed LSN.
    pub lsn_end: u64,
    /// First LSN of the segment being written.
    pub segment: u64,
    /// Committed bytes of that segment.
    pub offset: u64,
    /// The writer has stopped: nothing more will be committed.
    pub closed: bool,
}

/// State shared by the writer, its [`Log`] handles and the tails.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) dir: PathBuf,
    /// The committed watermark, read and replaced without a lock: the learner threads that
    /// read it run below the writer's priority (`learner_nice`), and a lock one of them held
    /// when it was preempted would stall the next commit until that thread ran again.
    watermark: ArcSwap<Watermark>,
    /// Each tail's wake-up, by model (see [`Signal`]). Locked by the writer only for a commit
    /// that holds examples (it publishes that commit's watermark under it), and by tails only
    /// when they start.
    signals: Mutex<Vec<Weak<Signal>>>,
    failing: AtomicBool,
    /// The writer has found its queue empty and sleeps until a record arrives: the next
    /// record wakes it, whatever its kind.
    writer_idle: AtomicBool,
    /// Each tail's retention floor: the lowest LSN its consumer may still need.
    floors: Mutex<Vec<Weak<AtomicU64>>>,
}

impl Shared {
    pub(super) fn new(dir: PathBuf, watermark: Watermark) -> Self {
        Self {
            dir,
            watermark: ArcSwap::from_pointee(watermark),
            signals: Mutex::new(Vec::new()),
            failing: AtomicBool::new(false),
            writer_idle: AtomicBool::new(false),
            floors: Mutex::new(Vec::new()),
        }
    }

    /// The committed watermark now.
    pub(super) fn watermark(&self) -> Watermark {
        **self.watermark.load()
    }

    /// A wake-up for a tail of `model`, woken by every commit holding one of its examples.
    pub(super) fn register_signal(&self, model: &str) -> Arc<Signal> {
        let mut signals = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock, so that no commit with examples falls between this watermark and
        // the registration: the model may have examples anywhere below it, and past it the
        // writer tells.
        let signal = Arc::new(Signal {
            model: model.to_owned(),
            examples_end: AtomicU64::new(self.watermark().lsn_end),
            lock: Mutex::new(()),
            woken: Condvar::new(),
            #[cfg(test)]
            wakes: AtomicU64::new(0),
        });
        signals.retain(|s| s.strong_count() > 0);
        signals.push(Arc::downgrade(&signal));
        signal
    }

    /// Waits up to `timeout` on `signal` while the watermark has not passed `lsn` (and the
    /// writer runs): until a commit holds an example of the signal's model, or the timeout.
    pub(super) fn wait_past(&self, lsn: u64, timeout: Duration, signal: &Signal) -> Watermark {
        let waiting = |w: Watermark| w.lsn_end <= lsn && !w.closed;
        if waiting(self.watermark()) {
            let guard = signal.lock.lock().unwrap_or_else(|p| p.into_inner());
            // Checked again under the lock, and after every wake-up.
            let _ = signal
                .woken
                .wait_timeout_while(guard, timeout, |()| waiting(self.watermark()))
                .unwrap_or_else(|p| p.into_inner());
        }
        self.watermark()
    }

    /// Publishes the watermark `to` and wakes the tails of the `models` whose examples the
    /// commit holds (every tail once the writer has stopped).
    fn advance(&self, to: Watermark, models: &[String]) {
        if models.is_empty() && !to.closed {
            self.watermark.store(Arc::new(to));
            return;
        }
        let registered = self.signals.lock().unwrap_or_else(|p| p.into_inner());
        let woken = || {
            registered
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|signal| to.closed || models.contains(&signal.model))
        };
        // Each woken model's `examples_end` before the watermark, both under the lock: a
        // tail that sees this watermark sees where its model's examples end, and a tail
        // that registers now sees either both or neither. No example is ever skipped.
        for signal in woken() {
            signal.examples_end.fetch_max(to.lsn_end, Ordering::SeqCst);
        }
        self.watermark.store(Arc::new(to));
        for signal in woken() {
            signal.wake();
        }
    }

    pub(super) fn register_floor(&self, floor: &Arc<AtomicU64>) {
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        floors.retain(|f| f.strong_count() > 0);
        floors.push(Arc::downgrade(floor));
    }

    /// The lowest LSN a live tail still needs (`u64::MAX` when none).
    fn floor(&self) -> u64 {
        let floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        floors
            .iter()
            .filter_map(Weak::upgrade)
            .map(|f| f.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// One tail's wake-up: the writer notifies it after a commit that holds an example of its
/// model.
#[derive(Debug)]
pub(super) struct Signal {
    model: String,
    /// One past the last LSN that may hold an example of `model`: records from here to the
    /// watermark hold none, and a tail past it may skip them unread.
    examples_end: AtomicU64,
    /// The tail sleeps on `woken` under this lock, which the writer only ever tries.
    lock: Mutex<()>,
    woken: Condvar,
    /// Times the writer woke it.
    #[cfg(test)]
    wakes: AtomicU64,
}

impl Signal {
    /// One past the last LSN that may hold an example of the model (see the field).
    pub(super) fn examples_end(&self) -> u64 {
        self.examples_end.load(Ordering::SeqCst)
    }

    fn wake(&self) {
        #[cfg(test)]
        self.wakes.fetch_add(1, Ordering::Relaxed);
        // A waiter holding the lock has either not checked the watermark yet (it will see
        // the new one) or checked the old one and is about to sleep: then it misses this
        // wake-up and reads at its timeout (a learner's idle wait, 50 ms). Taking the lock
        // whenever it is free closes that gap in the common case without ever blocking the
        // writer on a thread of lower priority.
        drop(self.lock.try_lock());
        self.woken.notify_all();
    }

    /// Times the writer woke it.
    #[cfg(test)]
    pub(super) fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }
}

/// The cloneable handle request handlers use to log.
#[derive(Debug, Clone)]
pub struct Log {
    /// Bounded; the writer thread holds the receiver. Full = RESOURCE_EXHAUSTED for rewards
    /// (and for decisions under [`OnLogFull::Reject`]).
    tx: Sender<Op>,
    shared: Arc<Shared>,
    sync_decisions: bool,
    on_full: OnLogFull,
    /// Wakes the writer; after `tx` so that the last handle's drop wakes it to find the
    /// channel disconnected.
    waker: Arc<Waker>,
}

/// The writer thread's handle, to wake it. Dropped with the last [`Log`], it wakes the writer
/// a last time, which then finds the channel closed and stops.
#[derive(Debug)]
struct Waker {
    writer: Thread,
    /// Queue length at which a record nobody waits for wakes the writer anyway (half the
    /// queue), so that the commit delay never lets the queue fill.
    wake_at: usize,
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.writer.unpark();
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Decision(..) => "Decision",
            Self::Reward(..) => "Reward",
            Self::Closed(_) => "Closed",
            Self::Flush(_) => "Flush",
            Self::Shutdown => "Shutdown",
        })
    }
}

impl Log {
    /// Queues a decision. Returns an acknowledgement to await when `sync_decisions` is set.
    ///
    /// # Errors
    /// The writer queue is full, the writer has stopped, or the log is failing.
    pub fn decision(&self, record: DecisionRecord) -> Result<Option<Ack>, Error> {
        self.check_writable()?;
        let (ack, rx) = if self.sync_decisions {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.send(Op::Decision(Box::new(record), ack))?;
        Ok(rx)
    }

    /// Queues a reward (with its training example); the acknowledgement resolves once it is
    /// durable under the configured mode. The learner reads it from the log after that.
    ///
    /// # Errors
    /// The writer queue is full, the writer has stopped, or the log is failing.
    pub fn reward(&self, record: RewardRecord) -> Result<Ack, Error> {
        self.check_writable()?;
        let (ack, rx) = oneshot::channel();
        self.send(Op::Reward(Box::new(record), ack))?;
        Ok(rx)
    }

    /// Queues the end of a decision's window (with the default reward's example, if any).
    ///
    /// # Errors
    /// The writer queue is full or the writer has stopped.
    pub fn closed(&self, record: ClosedRecord) -> Result<(), Error> {
        self.send(Op::Closed(Box::new(record)))
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

    /// Whether the last write failed (a full disk, an I/O error) and none has succeeded
    /// since: the log cannot take new events now.
    pub fn is_failing(&self) -> bool {
        self.shared.failing.load(Ordering::Acquire)
    }

    /// The committed watermark now.
    pub fn watermark(&self) -> Watermark {
        self.shared.watermark()
    }

    /// A reader of `model`'s training examples from `from` on (see [`super::Tail`]).
    pub fn tail(&self, model: &str, from: u64) -> super::Tail {
        super::Tail::new(Arc::clone(&self.shared), model, from)
    }

    /// Asks the writer to commit (fsynced) everything queued and exit; waits for room in
    /// the queue if it is full.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Op::Shutdown);
        self.waker.writer.unpark();
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

    fn check_writable(&self) -> Result<(), Error> {
        if self.is_failing() {
            return Err(Error::Unavailable(
                "the log cannot be written now (see the server log); retry later".into(),
            ));
        }
        Ok(())
    }

    fn send(&self, op: Op) -> Result<(), Error> {
        let urgent = op.waited_on();
        match self.tx.try_send(op) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(Error::Overloaded("log writer queue")),
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable("log writer stopped".into()));
            }
        }
        // Pairs with the fence in `Writer::wait_idle`: either the writer sees this record
        // before it sleeps, or this sees it asleep and wakes it.
        fence(Ordering::SeqCst);
        if urgent
            || self.shared.writer_idle.load(Ordering::Relaxed)
            || self.tx.len() >= self.waker.wake_at
        {
            // A futex call only when the writer sleeps; otherwise one atomic swap.
            self.waker.writer.unpark();
        }
        Ok(())
    }
}

/// Owns the writer thread; [`LogWriter::shutdown`] flushes and joins it once every [`Log`]
/// handle is gone (dropping it joins only a writer that has already stopped).
#[derive(Debug)]
pub struct LogWriter {
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Waits for the writer to commit what is queued and exit. Call [`Log::shutdown`] first.
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

/// Starts the writer on a new segment whose first LSN is `first_lsn`.
pub(super) fn start(config: &StorageConfig, first_lsn: u64) -> Result<(Log, LogWriter), Error> {
    let dir = segment::dir(&config.data_dir);
    let (file, path) = create_segment(&dir, first_lsn)?;
    let watermark = Watermark {
        lsn_end: first_lsn,
        segment: first_lsn,
        offset: segment::MAGIC.len() as u64,
        closed: false,
    };
    let shared = Arc::new(Shared::new(dir, watermark));
    let (tx, rx) = crossbeam_channel::bounded(config.writer_queue_capacity);
    let writer = Writer {
        shared: Arc::clone(&shared),
        mode: config.durability,
        sync_interval: Duration::from_millis(config.sync_interval_ms),
        retention: Duration::from_secs(config.retention_hours.saturating_mul(3600)),
        segment_bytes: config.segment_bytes,
        rx,
        file,
        path,
        committed: watermark,
        last_sync: Instant::now(),
        unsynced: false,
        last_retention: Instant::now(),
        buf: Vec::with_capacity(64 * 1024),
        example_models: Vec::new(),
        example_count: 0,
        allocated: segment::MAGIC.len() as u64,
        preallocate: config.preallocate_bytes,
        preallocate_off: false,
        errors: ErrorLog::default(),
        faults: config.faults.clone(),
        commit_delay: Duration::from_micros(config.commit_delay_us),
    };
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || writer.run())
        .map_err(|e| Error::Internal(format!("cannot spawn log writer: {e}")))?;
    let waker = Arc::new(Waker {
        writer: thread.thread().clone(),
        wake_at: (config.writer_queue_capacity / 2).clamp(1, MAX_GROUP),
    });
    Ok((
        Log {
            tx,
            shared,
            sync_decisions: config.sync_decisions,
            on_full: config.on_log_full,
            waker,
        },
        LogWriter {
            thread: Some(thread),
        },
    ))
}

/// Creates a segment file with its header, durably (file and directory fsynced), so that a
/// segment either exists with a whole header or not at all after a crash... or is shorter
/// than a header, which recovery deletes.
fn create_segment(dir: &std::path::Path, base: u64) -> Result<(File, PathBuf), Error> {
    fs::create_dir_all(dir).map_err(|e| segment::io_error("cannot create", dir, &e))?;
    let path = segment::path(dir, base);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| segment::io_error("cannot create", &path, &e))?;
    file.write_all(segment::MAGIC)
        .and_then(|()| file.sync_all())
        .map_err(|e| segment::io_error("cannot write", &path, &e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| segment::io_error("cannot fsync", dir, &e))?;
    Ok((file, path))
}

/// Most operations folded into one commit.
const MAX_GROUP: usize = 4096;
/// Bytes a failing log tries to append (and cuts off again) to see whether the disk has room.
const PROBE_BYTES: usize = 4096;
/// How often a failing log retries.
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// At most one error line per this period while writes keep failing.
const ERROR_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Rate-limited error logging: the first failure is logged at once, repeats are counted and
/// summarised at most every [`ERROR_LOG_PERIOD`].
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn report(&mut self, what: &str, error: &Error) {
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_PERIOD) {
            self.suppressed += 1;
            return;
        }
        tracing::error!(%error, suppressed = self.suppressed, "{what}");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

struct Writer {
    shared: Arc<Shared>,
    mode: DurabilityMode,
    sync_interval: Duration,
    retention: Duration,
    segment_bytes: u64,
    rx: Receiver<Op>,
    file: File,
    path: PathBuf,
    /// What is committed (mirrors the shared watermark).
    committed: Watermark,
    last_sync: Instant,
    unsynced: bool,
    last_retention: Instant,
    /// The group's encoded frames; reused.
    buf: Vec<u8>,
    /// The models the group holds training examples for (the first `example_count`; the
    /// strings are reused from group to group): their tails are woken.
    example_models: Vec<String>,
    example_count: usize,
    /// The segment file's length: frames up to `committed.offset`, zeros after.
    allocated: u64,
    /// Bytes zero-filled ahead of the frames (`storage.preallocate_bytes`; 0: none).
    preallocate: u64,
    /// Preallocating failed in this segment (a nearly full disk): append until the next.
    preallocate_off: bool,
    errors: ErrorLog,
    faults: StorageFaults,
    /// How long records nobody waits for may gather after a commit (`storage.commit_delay_us`).
    commit_delay: Duration,
}

/// What ended the writer's idle wait.
enum Wake {
    /// A record arrived.
    Op(Op),
    /// The wait's period passed with nothing queued.
    Timeout,
    /// The `stall` fault is set: take nothing.
    Stalled,
    /// Every [`Log`] handle is gone.
    Disconnected,
}

impl Writer {
    fn run(mut self) {
        let mut ops = Vec::new();
        // Whether the last group held a record someone waited on (rewards are flowing): then
        // the writer waits on the channel itself, whose receiver spins briefly before it
        // sleeps and so takes the next reward without a wake-up, and any record wakes it.
        // Measured: with every reward waking a parked writer, the writer's CPU per round
        // (decision + reward) doubled under `periodic`.
        let mut waited_on = false;
        loop {
            while self.faults.stall.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            ops.extend(self.rx.try_iter().take(MAX_GROUP));
            if ops.is_empty() {
                let wait = if self.shared.failing.load(Ordering::Acquire) {
                    RETRY_PERIOD
                } else {
                    self.sync_interval
                };
                let woken = if waited_on {
                    self.wait_any(wait)
                } else {
                    self.wait_idle(wait)
                };
                match woken {
                    Wake::Op(op) => {
                        ops.push(op);
                        ops.extend(self.rx.try_iter().take(MAX_GROUP - 1));
                    }
                    Wake::Timeout => {
                        waited_on = false;
                        if self.shared.failing.load(Ordering::Acquire) {
                            self.retry();
                        } else if self.unsynced {
                            self.commit_group(&mut Vec::new(), true);
                        }
                        self.maybe_retain();
                        continue;
                    }
                    Wake::Stalled => continue,
                    Wake::Disconnected => break,
                }
            }
            // Nothing after a shutdown request is taken (there should be nothing: serving
            // has stopped); what is before it is committed.
            let stop = ops.iter().position(|op| matches!(op, Op::Shutdown));
            if let Some(at) = stop {
                ops.truncate(at);
            }
            let force_sync = stop.is_some() || ops.iter().any(|op| matches!(op, Op::Flush(_)));
            waited_on = ops.iter().any(Op::waited_on);
            self.commit_group(&mut ops, force_sync);
            if stop.is_some() {
                break;
            }
            self.maybe_retain();
            if !waited_on && !self.commit_delay.is_zero() {
                // Records nobody waits for gather meanwhile; a waited-on one (or a half-full
                // queue) wakes the writer early.
                std::thread::park_timeout(self.commit_delay);
            }
        }
        if self.unsynced {
            self.commit_group(&mut Vec::new(), true);
        }
        self.cut_preallocated();
        let mut closed = self.committed;
        closed.closed = true;
        self.shared.advance(closed, &[]);
        tracing::debug!("log writer stopped");
    }

    /// Waits on the channel until a record arrives or `wait` passes with none.
    fn wait_any(&self, wait: Duration) -> Wake {
        match self.rx.recv_timeout(wait) {
            Ok(op) => Wake::Op(op),
            Err(RecvTimeoutError::Timeout) => Wake::Timeout,
            Err(RecvTimeoutError::Disconnected) => Wake::Disconnected,
        }
    }

    /// Sleeps until a record arrives or `wait` passes with none. While it sleeps, any record
    /// wakes it (see `Log::send`).
    fn wait_idle(&self, wait: Duration) -> Wake {
        let deadline = Instant::now() + wait;
        let woken = loop {
            if self.faults.stall.load(Ordering::Acquire) {
                break Wake::Stalled;
            }
            self.shared.writer_idle.store(true, Ordering::Relaxed);
            // Pairs with the fence in `Log::send` (see there).
            fence(Ordering::SeqCst);
            match self.rx.try_recv() {
                Ok(op) => break Wake::Op(op),
                Err(TryRecvError::Disconnected) => break Wake::Disconnected,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break Wake::Timeout;
            }
            std::thread::park_timeout(deadline - now);
        };
        self.shared.writer_idle.store(false, Ordering::Relaxed);
        woken
    }

    /// Writes `ops` as one group and acknowledges them; a failure is reported to every
    /// waiter and leaves the file as it was before the group.
    fn commit_group(&mut self, ops: &mut Vec<Op>, force_sync: bool) {
        // In fsync mode only a group someone waits on (a reward, a synced decision, a flush)
        // needs its own fsync: a decision nobody waits for becomes durable with the next
        // acknowledged write (writes are ordered) or the periodic sync, as promised.
        // (Shutdown wakes the writer at once but needs no fsync of its own: the final flush
        // before it has one.)
        let waited_on = ops
            .iter()
            .any(|op| op.waited_on() && !matches!(op, Op::Shutdown));
        let sync = force_sync
            || (self.mode == DurabilityMode::Fsync && waited_on)
            || self.last_sync.elapsed() >= self.sync_interval;
        self.buf.clear();
        self.example_count = 0;
        let mut acks = Vec::new();
        let mut records = 0u64;
        for op in ops.drain(..) {
            let record = match op {
                Op::Decision(d, ack) => {
                    acks.extend(ack);
                    Record::Decision(*d)
                }
                Op::Reward(r, ack) => {
                    acks.push(ack);
                    Record::Reward(*r)
                }
                Op::Closed(c) => Record::Closed(*c),
                Op::Flush(ack) => {
                    acks.push(ack);
                    continue;
                }
                Op::Shutdown => continue,
            };
            record.encode_frame(&mut self.buf);
            records += 1;
            let seen = &self.example_models[..self.example_count];
            if record.example().is_some() && !seen.iter().any(|m| m == record.model()) {
                match self.example_models.get_mut(self.example_count) {
                    Some(slot) => {
                        slot.clear();
                        slot.push_str(record.model());
                    }
                    None => self.example_models.push(record.model().to_owned()),
                }
                self.example_count += 1;
            }
        }
        match self.write(records, sync) {
            Ok(()) => {
                self.mark_writable();
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                self.mark_failing(
                    "log write failed; refusing new events until a retry succeeds",
                    &e,
                );
                for ack in acks {
                    let _ = ack.send(Err(Error::Unavailable(
                        "the log cannot be written now (see the server log); retry later".into(),
                    )));
                }
            }
        }
    }

    /// While failing: checks whether the disk takes writes again by appending a block past
    /// the committed end and cutting it off again. The log accepts events once it does.
    fn retry(&mut self) {
        let probe = if self.faults.fail_writes.load(Ordering::Acquire) {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            // From the committed end, so that the probe grows the file (preallocated zeros
            // would take it without asking the disk for room).
            self.cut_back();
            self.file
                .write_all(&[0u8; PROBE_BYTES])
                .and_then(|()| self.file.sync_data())
        };
        self.cut_back();
        match probe {
            Ok(()) => self.mark_writable(),
            Err(e) => {
                let e = segment::io_error("cannot write", &self.path, &e);
                self.mark_failing("the log is still not writable", &e);
            }
        }
    }

    /// The log cannot take events: refused until a write or probe succeeds (health follows
    /// `Log::is_failing`), counted, and logged (rate-limited).
    fn mark_failing(&mut self, what: &str, error: &Error) {
        self.shared.failing.store(true, Ordering::Release);
        metrics::log_write_failed();
        self.errors.report(what, error);
    }

    /// A write or probe succeeded: if the log was failing, it takes events again.
    fn mark_writable(&mut self) {
        if self.shared.failing.swap(false, Ordering::AcqRel) {
            metrics::log_writable();
            tracing::info!("the log is writable again");
        }
    }

    /// Cuts the segment back to its committed end, so that it stays a sequence of whole
    /// frames after a partial write (the preallocated zeros go with it; the next write
    /// preallocates again).
    fn cut_back(&mut self) {
        let _ = self.file.set_len(self.committed.offset);
        self.allocated = self.committed.offset;
        let _ = std::io::Seek::seek(
            &mut self.file,
            std::io::SeekFrom::Start(self.committed.offset),
        );
    }

    /// Zero-fills the segment up to at least byte `end` (and `preallocate` further, up to the
    /// segment's size) if it is shorter, leaving the file position at the committed end.
    fn preallocate_to(&mut self, end: u64) -> std::io::Result<()> {
        if self.preallocate == 0 || self.preallocate_off || end <= self.allocated {
            return Ok(());
        }
        if self.faults.fail_preallocation.load(Ordering::Acquire) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let target = (end + self.preallocate).min(self.segment_bytes.max(end));
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(self.allocated))?;
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all(&ZEROS[..n])?;
            at += n as u64;
        }
        self.allocated = target;
        std::io::Seek::seek(
            &mut self.file,
            std::io::SeekFrom::Start(self.committed.offset),
        )?;
        Ok(())
    }

    /// Cuts the preallocated zeros off a segment that takes no more writes (sealed, or the
    /// writer stopping), durably. Zeros left by a failure here are harmless: readers stop at
    /// them.
    fn cut_preallocated(&mut self) {
        if self.allocated <= self.committed.offset {
            return;
        }
        match self
            .file
            .set_len(self.committed.offset)
            .and_then(|()| self.file.sync_all())
        {
            Ok(()) => self.allocated = self.committed.offset,
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "cannot cut the preallocated zeros off a log segment; readers skip them"
            ),
        }
    }

    /// Appends the encoded group (rolling to a new segment first when the current one is
    /// full), fsyncs if asked, and moves the watermark.
    fn write(&mut self, records: u64, sync: bool) -> Result<(), Error> {
        if records > 0 && self.committed.offset >= self.segment_bytes {
            self.roll()?;
        }
        let written = if self.faults.fail_writes.load(Ordering::Acquire) {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            let end = self.committed.offset + self.buf.len() as u64;
            if let Err(e) = self.preallocate_to(end) {
                // Best effort: a disk without room for the zeros may still take the records.
                // Appending from here on in this segment; the next one preallocates again.
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "cannot preallocate log space; appending to this segment instead"
                );
                self.cut_back();
                self.preallocate_off = true;
            }
            self.file.write_all(&self.buf)
        };
        if !self.buf.is_empty()
            && let Err(e) = written
        {
            self.cut_back();
            return Err(segment::io_error("cannot write", &self.path, &e));
        }
        if sync && let Err(e) = self.file.sync_data() {
            // Not acknowledged, so not kept: LSNs are positions in the segment, and a frame
            // left behind would shift every later one.
            self.cut_back();
            return Err(segment::io_error("cannot fsync", &self.path, &e));
        }
        if sync {
            self.last_sync = Instant::now();
            self.unsynced = false;
        } else if records > 0 {
            self.unsynced = true;
        }
        if records > 0 {
            self.committed.lsn_end += records;
            self.committed.offset += self.buf.len() as u64;
            self.shared
                .advance(self.committed, &self.example_models[..self.example_count]);
            metrics::log_appended(records, self.buf.len() as u64);
        }
        Ok(())
    }

    /// Seals the current segment (fsynced) and starts the next one.
    fn roll(&mut self) -> Result<(), Error> {
        self.file
            .sync_data()
            .map_err(|e| segment::io_error("cannot fsync", &self.path, &e))?;
        self.cut_preallocated();
        let base = self.committed.lsn_end;
        let (file, path) = create_segment(&self.shared.dir, base)?;
        self.file = file;
        self.path = path;
        self.allocated = segment::MAGIC.len() as u64;
        self.preallocate_off = false;
        self.committed.segment = base;
        self.committed.offset = segment::MAGIC.len() as u64;
        self.shared.advance(self.committed, &[]);
        Ok(())
    }

    /// Deletes whole sealed segments whose newest record is older than the retention and
    /// that no consumer needs any more (every learner's floor is past them).
    fn maybe_retain(&mut self) {
        let period = (self.retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        if self.last_retention.elapsed() < period {
            return;
        }
        self.last_retention = Instant::now();
        let segments = match segment::list(&self.shared.dir) {
            Ok(s) => s,
            Err(e) => {
                self.errors
                    .report("cannot list log segments for retention", &e);
                return;
            }
        };
        let floor = self.shared.floor();
        let cutoff = SystemTime::now().checked_sub(self.retention);
        let mut removed = 0u64;
        // A segment's records end where the next one's begin.
        for pair in segments.windows(2) {
            let ((_, path), (next_base, _)) = (&pair[0], &pair[1]);
            if *next_base > floor || *next_base > self.committed.segment {
                break;
            }
            let old_enough = match (cutoff, fs::metadata(path).and_then(|m| m.modified())) {
                (Some(cutoff), Ok(modified)) => modified < cutoff,
                _ => false,
            };
            if !old_enough {
                break;
            }
            match fs::remove_file(path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    self.errors.report(
                        "cannot delete an expired log segment",
                        &segment::io_error("cannot delete", path, &e),
                    );
                    break;
                }
            }
        }
        if removed > 0 {
            metrics::log_segments_removed(removed);
            tracing::info!(removed, "expired log segments deleted");
        }
    }
}
