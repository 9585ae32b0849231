//! The online learner: one OS thread per model that owns the trainable network and its
//! optimizer, reads its model's training examples from the log, folds them in with minibatch
//! SGD, and publishes copied snapshots.
//!
//! The learner pulls its examples from an [`ExampleSource`] (in the service, the log's
//! [`Tail`]): nothing pushes into it, so a slow or stalled learner never holds up the log
//! writer or another model; it only falls behind in the log. Serving reads the latest snapshot
//! from an [`ArcSwap`] without taking any lock the learner holds.

mod linear;
mod priority;
mod replay;
mod reward_stats;
mod trainer;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

pub use replay::{Example, Replay};
pub use reward_stats::RunningStats;
pub use trainer::Trainer;

use crate::{
    config::ModelConfig,
    error::Error,
    metrics,
    policy::Snapshot,
    storage::{
        Tail, VersionMark,
        checkpoint::{self, Checkpoint},
    },
};

/// Where a learner's examples come from, in log order.
pub trait ExampleSource: Send + 'static {
    /// Up to `max` new examples, waiting up to `timeout` when there are none. `Ok(None)` once
    /// the source is finished (the log writer stopped and everything was read).
    ///
    /// # Errors
    /// The source cannot be read now (it may recover: the learner retries).
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<Example>>, Error>;

    /// Whether everything committed before `lsn` has been read.
    fn reached(&self, lsn: u64) -> bool;

    /// Examples below `lsn` will not be asked for again (a checkpoint covers them and its
    /// replay window starts there).
    fn release_below(&mut self, _lsn: u64) {}

    /// How far behind the source's end the learner is (log records not yet read).
    fn lag(&self) -> u64 {
        0
    }
}

impl ExampleSource for Tail {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<Example>>, Error> {
        Tail::poll(self, max, timeout)
    }

    fn reached(&self, lsn: u64) -> bool {
        self.position() >= lsn
    }

    fn release_below(&mut self, lsn: u64) {
        Tail::release_below(self, lsn);
    }

    fn lag(&self) -> u64 {
        self.committed().saturating_sub(self.position())
    }
}

/// A channel of examples (tests and benchmarks: no log). Finished when every sender is gone.
impl ExampleSource for Receiver<Example> {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<Example>>, Error> {
        let mut out = Vec::new();
        match self.recv_timeout(timeout) {
            Ok(e) => out.push(e),
            Err(RecvTimeoutError::Timeout) => return Ok(Some(out)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
        }
        while out.len() < max {
            match self.try_recv() {
                Ok(e) => out.push(e),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        Ok(Some(out))
    }

    fn reached(&self, _lsn: u64) -> bool {
        true
    }
}

/// Counters the learner keeps, readable from any thread.
#[derive(Debug, Default)]
pub struct LearnerStats {
    /// Examples read into the replay buffer.
    pub examples: AtomicU64,
    /// SGD steps taken over the model's life (checkpointed).
    pub steps: AtomicU64,
}

/// State shared between the learner thread and its handles.
#[derive(Debug)]
struct Shared {
    /// Written only by the learner thread (and once at start); read by every decision.
    snapshot: ArcSwap<Snapshot>,
    stats: LearnerStats,
    /// Set by [`Learner::shutdown`]: read what the source still has, publish, checkpoint, exit.
    stop: AtomicBool,
}

/// The cheap, cloneable side of a learner: what request handlers hold.
#[derive(Debug, Clone)]
pub struct LearnerHandle {
    shared: Arc<Shared>,
}

impl LearnerHandle {
    /// The latest published snapshot. Lock-free: the learner never blocks this.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Counters (examples read, steps).
    pub fn stats(&self) -> &LearnerStats {
        &self.shared.stats
    }

    /// A handle with no learner thread behind it, serving `snapshot` until
    /// [`LearnerHandle::install`] swaps in a newer one (a cluster replica, whose weights come
    /// from the model's trainer elsewhere).
    pub fn detached(snapshot: Snapshot) -> Self {
        Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(snapshot),
                stats: LearnerStats::default(),
                stop: AtomicBool::new(false),
            }),
        }
    }

    /// Serves `snapshot` from now on if its version is above the one serving, so that the
    /// version never goes backwards; returns whether it was installed. Only for
    /// [`LearnerHandle::detached`] handles (a learner thread would overwrite it).
    pub fn install(&self, snapshot: Arc<Snapshot>) -> bool {
        let mut installed = false;
        self.shared.snapshot.rcu(|current| {
            installed = snapshot.version > current.version;
            if installed {
                Arc::clone(&snapshot)
            } else {
                Arc::clone(current)
            }
        });
        installed
    }

    /// Sets the trained-steps counter a detached handle reports (the trainer's count).
    pub fn set_steps(&self, steps: u64) {
        self.shared.stats.steps.store(steps, Ordering::Relaxed);
    }
}

/// The owner of a learner thread. Dropping it (or [`Learner::shutdown`]) stops the thread
/// after it has read what its source still holds, and joins it.
#[derive(Debug)]
pub struct Learner {
    handle: LearnerHandle,
    thread: Option<JoinHandle<()>>,
}

impl Learner {
    /// Builds the model's network from its seed and starts its learner thread on `source`,
    /// with no persistence (tests, benchmarks).
    ///
    /// # Errors
    /// The network cannot be built or the thread cannot be spawned.
    pub fn start(config: &ModelConfig, source: impl ExampleSource) -> Result<Self, Error> {
        Self::resume(config, Box::new(source), Resume::default())
    }

    /// Starts the learner from `resume`'s checkpoint (if any), then reads `source` up to
    /// `resume.catch_up_to` before returning: examples the checkpoint covers go back into
    /// replay, later ones are trained on as new (at most `max_step_backlog` steps before
    /// serving starts). The thread then follows the source.
    ///
    /// # Errors
    /// The network cannot be built, the checkpoint does not fit it, the source cannot be
    /// read, or the thread cannot be spawned.
    pub fn resume(
        config: &ModelConfig,
        source: Box<dyn ExampleSource>,
        resume: Resume,
    ) -> Result<Self, Error> {
        Self::resume_marked(config, source, resume, None)
    }

    /// [`Learner::resume`] with the model's durable version mark (the service's local
    /// mode): the version it serves comes back exactly as it was when the newest checkpoint
    /// is sealed to it and no example after that checkpoint needs training; otherwise it is a
    /// new version above every one that may have been published. Either way that version is
    /// checkpointed and sealed before the learner serves it, so a `kill -9` before anything
    /// is learned brings the same version back. Every later publish reserves its version
    /// first, and a checkpoint of the published weights seals it again.
    ///
    /// # Errors
    /// As [`Learner::resume`], or the mark or that checkpoint cannot be written.
    pub fn resume_marked(
        config: &ModelConfig,
        mut source: Box<dyn ExampleSource>,
        resume: Resume,
        mut mark: Option<VersionMark>,
    ) -> Result<Self, Error> {
        let mut trainer = Trainer::new(config)?;
        let checkpoint_version = match &resume.checkpoint {
            Some(ck) => {
                trainer.restore(ck)?;
                Some(ck.meta.version)
            }
            None => None,
        };
        let covered = resume.checkpoint.as_ref().map(|ck| ck.meta.last_seq);
        let mut owed = 0usize;
        let mut read = 0u64;
        // Examples the checkpoint does not cover: the weights and reward scale move past it.
        let mut added = 0u64;
        let started = Instant::now();
        let mut last_report = Instant::now();
        while !source.reached(resume.catch_up_to) {
            let Some(batch) = source.poll(MAX_DRAIN, Duration::from_millis(50))? else {
                break;
            };
            if batch.is_empty() && source.lag() == 0 {
                // Nothing more is committed: the log ends short of where it was expected to.
                break;
            }
            read += batch.len() as u64;
            for example in batch {
                if covered.is_some_and(|c| example.seq <= c) {
                    trainer.push_replay(example);
                } else {
                    added += 1;
                    owed += trainer.add(example);
                }
            }
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = Instant::now();
                tracing::info!(model = %config.name, examples = read, "recovery: reading the log");
            }
        }
        let trained = owed > 0;
        let resumed_steps = owed.min(config.learner.max_step_backlog);
        trainer.train(resumed_steps)?;
        // NeuralLinear's regressions are not checkpointed: refit them on the replay buffer
        // with the resumed network. From here on refreshes are throttled to the learner's
        // time budget.
        trainer.refresh_linear()?;
        trainer.throttle_refreshes(REFRESH_THROTTLE);
        if read > 0 {
            tracing::info!(
                model = %config.name,
                examples = read,
                steps = resumed_steps,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "recovery: log read and trained on"
            );
        }
        let version = match &mark {
            None => {
                // Versions never go backwards: past the checkpoint's, every version that
                // served a logged decision, and the caller's floor (the cluster trainer's
                // epoch, above anything an earlier trainer published, logged or not); a new
                // number whenever the weights may differ.
                let base = checkpoint_version
                    .unwrap_or(0)
                    .max(resume.max_served_version)
                    .max(resume.version_floor);
                if trained || base > checkpoint_version.unwrap_or(0) {
                    base + 1
                } else {
                    base
                }
            }
            Some(mark) => choose_version(
                checkpoint_version,
                added,
                resume.max_served_version.max(resume.version_floor),
                mark,
            ),
        };
        let mut written = checkpoint_version;
        if let Some(mark) = &mut mark {
            // Durable before it serves: a checkpoint holding exactly these weights under
            // `version`, then the seal (a crash in between recovers the same: a checkpoint
            // above the mark was never published). Without a data directory: the
            // reservation only.
            match &resume.data_dir {
                Some(dir) => {
                    if written != Some(version) {
                        let (tensors, meta) = trainer.checkpoint(version)?;
                        let replay_from = meta.replay_from;
                        checkpoint::save(
                            dir,
                            &config.name,
                            &tensors,
                            meta,
                            resume.checkpoints_kept,
                        )?;
                        source.release_below(replay_from);
                        written = Some(version);
                    }
                    mark.seal(version)?;
                }
                None => mark.reserve(version)?,
            }
        }
        let snapshot = trainer.snapshot(version)?;
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            stats: LearnerStats::default(),
            stop: AtomicBool::new(false),
        });
        shared.stats.steps.store(trainer.steps(), Ordering::Relaxed);
        shared.stats.examples.store(read, Ordering::Relaxed);
        let worker = Worker {
            model: config.name.clone(),
            trainer,
            publish_every_steps: config.learner.publish_every_steps,
            publish_interval: Duration::from_millis(config.learner.publish_interval_ms),
            max_step_backlog: config.learner.max_step_backlog,
            source,
            shared: Arc::clone(&shared),
            version,
            dirty: false,
            checkpoints: resume.data_dir.map(|dir| Checkpoints {
                data_dir: dir,
                interval: Duration::from_secs(resume.checkpoint_interval_secs.max(1)),
                every_examples: resume.checkpoint_every_examples.max(1),
                kept: resume.checkpoints_kept,
                since: 0,
                last: Instant::now(),
                last_version: written,
                // The checkpoint holds what serves now (restored or just written).
                exact: written == Some(version),
            }),
            mark,
        };
        let nice = config.learner.learner_nice;
        let thread = std::thread::Builder::new()
            .name(format!("learner-{}", config.name))
            .spawn(move || {
                match priority::lower_current_thread(nice) {
                    Ok(_) => {}
                    // Documented as Linux-only: not worth a warning per model elsewhere.
                    Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
                        tracing::debug!(model = %worker.model, error = %e, "learner_nice not applied");
                    }
                    Err(e) => tracing::warn!(model = %worker.model, nice, error = %e,
                        "cannot lower the learner thread's priority; it competes with serving"),
                }
                worker.run()
            })
            .map_err(|e| Error::Internal(format!("cannot spawn learner thread: {e}")))?;
        Ok(Self {
            handle: LearnerHandle { shared },
            thread: Some(thread),
        })
    }

    /// A handle for request handlers.
    pub fn handle(&self) -> LearnerHandle {
        self.handle.clone()
    }

    /// Asks the thread to read what its source still has, train, publish and exit, then
    /// joins it. Stop the log writer first so that the source ends.
    pub fn shutdown(&mut self) {
        self.handle.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("learner thread panicked");
        }
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a learner resumes from (see [`Learner::resume`]); the default is a fresh start
/// without persistence.
#[derive(Debug, Default)]
pub struct Resume {
    /// The newest usable checkpoint.
    pub checkpoint: Option<Checkpoint>,
    /// Read the source up to this LSN before serving (the log's end at startup).
    pub catch_up_to: u64,
    /// The highest version that served a logged decision.
    pub max_served_version: u64,
    /// Versions this learner publishes are above it (the cluster trainer's session epoch ×
    /// 2^32; 0 where a [`VersionMark`] keeps the versions).
    pub version_floor: u64,
    /// Where to write checkpoints; none = never.
    pub data_dir: Option<PathBuf>,
    /// How often to write them.
    pub checkpoint_interval_secs: u64,
    /// Write one after this many new examples, too.
    pub checkpoint_every_examples: u64,
    /// Keep this many of the newest (at least 1).
    pub checkpoints_kept: usize,
}

/// The version a learner with a durable mark serves at start. The newest checkpoint's own
/// version `c` when nothing after it is trained on and `c` names exactly its weights: the mark
/// is sealed to `c`, or `c` lies above every version that may have been published (a
/// checkpoint written for a version not yet served: a rollback's, or one a start wrote
/// before a crash stopped it sealing). Otherwise a new version above `c`, the mark and
/// `floor` (the highest version a logged decision names, and the caller's floor).
fn choose_version(checkpoint: Option<u64>, added: u64, floor: u64, mark: &VersionMark) -> u64 {
    match checkpoint {
        Some(c)
            if added == 0 && c >= floor && (mark.sealed() == Some(c) || c > mark.reserved()) =>
        {
            c
        }
        c => c.unwrap_or(0).max(mark.reserved()).max(floor) + 1,
    }
}

/// Checkpoint bookkeeping of a learner with a data directory.
struct Checkpoints {
    data_dir: PathBuf,
    interval: Duration,
    every_examples: u64,
    /// How many of the newest checkpoints to keep.
    kept: usize,
    /// Examples read since the last checkpoint.
    since: u64,
    last: Instant,
    last_version: Option<u64>,
    /// The checkpoint of `last_version` holds exactly what that version served (nothing
    /// was read or trained between its publish and the checkpoint): it may be sealed.
    exact: bool,
}

/// The learner thread's state: a [`Trainer`] plus its source and publishing cadence.
struct Worker {
    model: String,
    trainer: Trainer,
    publish_every_steps: usize,
    publish_interval: Duration,
    max_step_backlog: usize,
    source: Box<dyn ExampleSource>,
    shared: Arc<Shared>,
    version: u64,
    /// Read or trained since the last publish: the trainer's state is not the published one.
    dirty: bool,
    checkpoints: Option<Checkpoints>,
    /// The model's durable version mark (local mode): reserved before each publish, sealed
    /// after an exact checkpoint.
    mark: Option<VersionMark>,
}

/// A NeuralLinear refresh waits at least this many times its own duration after the last
/// one, so refreshing takes at most ~1/(1+4) = 20% of the learner thread.
const REFRESH_THROTTLE: u32 = 4;

/// Most examples read before training on them, so that a burst is folded into the replay
/// buffer in one go but publishing is not starved.
const MAX_DRAIN: usize = 1024;

/// How long the learner waits for new examples when it has nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(50);

impl Worker {
    fn run(mut self) {
        let mut owed = 0usize;
        let mut since_publish = 0usize;
        let mut last_publish = Instant::now();
        let mut finished = false;
        loop {
            let stopping = self.shared.stop.load(Ordering::Acquire);
            let wait = if owed == 0 && !finished {
                IDLE_WAIT
            } else {
                Duration::ZERO
            };
            let mut drained = 0usize;
            if !finished {
                match self.source.poll(MAX_DRAIN, wait) {
                    Ok(Some(batch)) => {
                        drained = batch.len();
                        for example in batch {
                            owed += self.take(example);
                        }
                    }
                    Ok(None) => finished = true,
                    Err(e) => {
                        tracing::error!(model = %self.model, error = %e, "cannot read the log; retrying");
                        std::thread::sleep(IDLE_WAIT);
                    }
                }
            } else if !stopping {
                std::thread::sleep(IDLE_WAIT);
            }
            // Under a reward rate the learner cannot keep up with, fewer steps per reward
            // beat refusing rewards: the backlog is capped and the excess skipped (counted).
            if owed > self.max_step_backlog {
                metrics::learner_steps_skipped(&self.model, (owed - self.max_step_backlog) as u64);
                owed = self.max_step_backlog;
            }
            // Train in slices so publishing keeps its cadence under sustained load.
            let slice = owed.min(self.publish_every_steps.max(1));
            if slice > 0 {
                match self.trainer.train(slice) {
                    Ok(loss) => {
                        self.shared
                            .stats
                            .steps
                            .fetch_add(slice as u64, Ordering::Relaxed);
                        metrics::learner_progress(
                            &self.model,
                            slice as u64,
                            loss,
                            self.source.lag(),
                            self.trainer.replay_len(),
                        );
                    }
                    Err(e) => {
                        tracing::error!(model = %self.model, error = %e, "training step failed")
                    }
                }
                owed -= slice;
                since_publish += slice;
                self.dirty = true;
            }
            let idle = owed == 0 && (drained == 0 || finished);
            if since_publish > 0
                && (idle
                    || since_publish >= self.publish_every_steps
                    || last_publish.elapsed() >= self.publish_interval)
            {
                match self.publish() {
                    Ok(()) => {
                        since_publish = 0;
                        last_publish = Instant::now();
                    }
                    Err(e) => {
                        tracing::error!(model = %self.model, error = %e, "publishing weights failed")
                    }
                }
            }
            if stopping && idle {
                break;
            }
            if let Some(ck) = &self.checkpoints
                && (ck.last.elapsed() >= ck.interval || ck.since >= ck.every_examples)
            {
                self.checkpoint();
            }
        }
        // Publish what the last slices trained, then the final checkpoint.
        if self.dirty
            && let Err(e) = self.publish()
        {
            tracing::error!(model = %self.model, error = %e, "publishing weights failed");
        }
        self.checkpoint();
        tracing::debug!(model = %self.model, version = self.version, "learner stopped");
    }

    /// Folds one example in; returns the number of steps it buys.
    fn take(&mut self, example: Example) -> usize {
        self.shared.stats.examples.fetch_add(1, Ordering::Relaxed);
        // The reward scale (and a NeuralLinear posterior) moves even before a step is taken.
        self.dirty = true;
        if let Some(ck) = &mut self.checkpoints {
            ck.since += 1;
        }
        let before = self.trainer.linear_refreshes();
        let steps = self.trainer.add(example);
        if let (Some((was, _)), Some((now, last))) = (before, self.trainer.linear_refreshes())
            && now > was
        {
            metrics::linear_refreshed(&self.model, now - was, last);
        }
        steps
    }

    /// Writes a checkpoint of the published version if it is newer than the last one, then
    /// tells the source what the log must keep for a restart from it; and seals the version
    /// mark to it if the checkpoint holds exactly what that version serves.
    fn checkpoint(&mut self) {
        let Some(ck) = &mut self.checkpoints else {
            return;
        };
        ck.last = Instant::now();
        ck.since = 0;
        if ck.last_version != Some(self.version) {
            let result = self
                .trainer
                .checkpoint(self.version)
                .and_then(|(tensors, meta)| {
                    let from = meta.replay_from;
                    checkpoint::save(&ck.data_dir, &self.model, &tensors, meta, ck.kept)
                        .map(|()| from)
                });
            match result {
                Ok(replay_from) => {
                    ck.last_version = Some(self.version);
                    ck.exact = !self.dirty;
                    self.source.release_below(replay_from);
                    tracing::debug!(model = %self.model, version = self.version, "checkpoint written");
                }
                Err(e) => {
                    tracing::error!(model = %self.model, error = %e, "checkpoint failed");
                    return;
                }
            }
        }
        if ck.exact
            && let Some(mark) = &mut self.mark
            && let Err(e) = mark.seal(self.version)
        {
            tracing::error!(model = %self.model, error = %e, "cannot seal the version mark");
        }
    }

    /// Copies the weights into a new snapshot and swaps it in for serving.
    fn publish(&mut self) -> Result<(), Error> {
        // Durable before anyone can see it: after a crash, recovery starts above it.
        if let Some(mark) = &mut self.mark {
            mark.reserve(self.version + 1)?;
        }
        self.version += 1;
        self.dirty = false;
        let snapshot = self.trainer.snapshot(self.version)?;
        metrics::model_published(&self.model, self.version, &snapshot.shape.drop_rates);
        self.shared.snapshot.store(Arc::new(snapshot));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;
    use crate::{config::ModelKind, model::matrix};

    fn config() -> ModelConfig {
        let mut config = ModelConfig::new("t", ModelKind::FixedArms, 2);
        config.arms = vec!["a".into(), "b".into()];
        config.network.hidden_layers = vec![16];
        config.learner.publish_every_steps = 4;
        config
    }

    fn wait_for(handle: &LearnerHandle, examples: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while handle.stats().examples.load(Ordering::Relaxed) < examples
            || handle.snapshot().version == 0
        {
            assert!(Instant::now() < deadline, "learner did not catch up");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A snapshot a reader holds does not change while the learner trains and publishes
    /// newer ones.
    #[test]
    fn held_snapshot_is_immutable_while_training() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut learner = Learner::start(&config(), rx).unwrap();
        let handle = learner.handle();
        let held = handle.snapshot();
        let before: Vec<Vec<f32>> = held
            .weights
            .layers()
            .iter()
            .map(|(w, _)| w.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        for i in 0..200 {
            let x = (i % 7) as f32 / 7.0;
            tx.send(Example {
                input: vec![x, 1.0 - x],
                head: i % 2,
                reward: f64::from(x),
                seq: u64::from(i),
            })
            .unwrap();
        }
        wait_for(&handle, 200);
        learner.shutdown();
        let after: Vec<Vec<f32>> = held
            .weights
            .layers()
            .iter()
            .map(|(w, _)| w.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(before, after, "the held snapshot changed");
        let latest = handle.snapshot();
        assert!(latest.version > 0);
        let trained: Vec<f32> = latest.weights.layers()[0]
            .0
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(
            trained, before[0],
            "training did not change the published weights"
        );
        assert_eq!(
            handle.stats().steps.load(Ordering::Relaxed),
            400,
            "2 updates per reward"
        );
    }

    /// The learner thread runs `learner_nice` levels below the thread that started it.
    #[cfg(target_os = "linux")]
    #[test]
    fn learner_thread_runs_learner_nice_levels_lower() {
        let own = priority::nice_of(&unsafe { libc::gettid() }.to_string());
        assert!(
            own <= 16,
            "run the tests at nice 16 or below (this thread: {own})"
        );
        let mut config = config();
        config.name = "nice".into();
        config.learner.learner_nice = 3;
        let (_tx, rx) = crossbeam_channel::unbounded::<Example>();
        let mut learner = Learner::start(&config, rx).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = std::fs::read_dir("/proc/self/task").unwrap().find_map(|t| {
                let tid = t.unwrap().file_name().into_string().unwrap();
                let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
                (comm.trim() == "learner-nice").then(|| priority::nice_of(&tid))
            });
            // The thread lowers its priority as it starts: wait until it has.
            match found {
                Some(n) if n == own + 3 => break,
                _ if Instant::now() > deadline => {
                    panic!("learner thread at nice {found:?}, not {}", own + 3)
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        learner.shutdown();
    }

    /// The learner fits a simple reward function: head 0 pays x0, head 1 pays 1 - x0, in
    /// reward units of 0..50 (standardisation makes the scale irrelevant).
    #[test]
    fn learns_a_contextual_reward() {
        let mut config = config();
        config.network.drop_rates = Some(vec![0.0, 0.0]);
        config.optimizer.updates_per_reward = 4;
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut learner = Learner::start(&config, rx).unwrap();
        let handle = learner.handle();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for i in 0..2000u32 {
            let x: f32 = rand::Rng::random(&mut rng);
            let head = i % 2;
            let reward = 50.0 * f64::from(if head == 0 { x } else { 1.0 - x });
            tx.send(Example {
                input: vec![x, 1.0],
                head,
                reward,
                seq: u64::from(i),
            })
            .unwrap();
        }
        wait_for(&handle, 2000);
        learner.shutdown();
        let snap = handle.snapshot();
        for (x, best) in [(0.9f32, 0usize), (0.1, 1)] {
            let out: Vec<f32> = snap
                .weights
                .forward(&matrix(vec![x, 1.0], 1, 2).unwrap(), None)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let rewards: Vec<f64> = out
                .iter()
                .map(|&y| f64::from(y) * snap.reward_std + snap.reward_mean)
                .collect();
            let expected = [50.0 * f64::from(x), 50.0 * f64::from(1.0 - x)];
            assert_eq!(
                if rewards[0] > rewards[1] { 0 } else { 1 },
                best,
                "x={x}: {rewards:?}"
            );
            for (got, want) in rewards.iter().zip(expected) {
                assert!(
                    (got - want).abs() < 7.5,
                    "x={x}: predicted {got}, true {want}"
                );
            }
        }
    }

    /// A log that holds `0` and nothing more: read at the start's catch-up.
    struct Backlog(Vec<Example>);

    impl ExampleSource for Backlog {
        fn poll(&mut self, max: usize, _: Duration) -> Result<Option<Vec<Example>>, Error> {
            if self.0.is_empty() {
                return Ok(None);
            }
            Ok(Some(self.0.drain(..self.0.len().min(max)).collect()))
        }

        fn reached(&self, _lsn: u64) -> bool {
            self.0.is_empty()
        }
    }

    /// The start version with a mark: the checkpoint's own when sealed to it (or above
    /// everything published) and nothing new is trained; otherwise above every version the
    /// mark, the log and the checkpoint know of.
    #[test]
    fn version_choice_with_a_mark() {
        let dir = tempfile::tempdir().unwrap();
        let mut sealed = VersionMark::open(dir.path(), "sealed").unwrap();
        sealed.seal(40).unwrap();
        let mut reserved = VersionMark::open(dir.path(), "reserved").unwrap();
        reserved.reserve(41).unwrap();
        let top = 41 + crate::storage::RESERVE_BLOCK - 1;
        let cases = [
            // (mark, checkpoint, examples after it, logged floor, version)
            (&sealed, Some(40), 0, 40, 40),
            (&sealed, Some(40), 1, 40, 41),
            (&sealed, Some(40), 0, 45, 46),
            (&sealed, Some(39), 0, 0, 41),
            (&sealed, None, 0, 0, 41),
            (&reserved, Some(40), 0, 40, top + 1),
            (&reserved, Some(top + 5), 0, 41, top + 5),
            (&reserved, Some(top + 5), 3, 41, top + 6),
        ];
        for (mark, checkpoint, added, floor, want) in cases {
            assert_eq!(
                choose_version(checkpoint, added, floor, mark),
                want,
                "{mark:?} {checkpoint:?} {added} {floor}"
            );
        }
    }

    /// With a mark and a data directory: the start version is checkpointed and sealed
    /// before serving; a publish reserves ahead on disk; a clean stop seals the last
    /// version, and a start without new examples serves it again (same weights); one with
    /// new examples serves a higher one.
    #[test]
    fn marked_learner_comes_back_as_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let config = config();
        let start = |source: Box<dyn ExampleSource>| {
            let (ck, _) = checkpoint::load_latest(dir.path(), "t", &config.layer_widths()).unwrap();
            Learner::resume_marked(
                &config,
                source,
                Resume {
                    checkpoint: ck,
                    data_dir: Some(dir.path().to_owned()),
                    checkpoints_kept: 3,
                    checkpoint_interval_secs: 3600,
                    checkpoint_every_examples: 1_000_000,
                    ..Resume::default()
                },
                Some(VersionMark::open(dir.path(), "t").unwrap()),
            )
            .unwrap()
        };
        let mark = || {
            let m = VersionMark::open(dir.path(), "t").unwrap();
            (m.reserved(), m.sealed())
        };
        let first_weights = |l: &Learner| -> Vec<f32> {
            l.handle().snapshot().weights.layers()[0]
                .0
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut learner = start(Box::new(rx));
        assert_eq!(learner.handle().snapshot().version, 1);
        assert_eq!(mark(), (1, Some(1)));
        for i in 0..50u32 {
            tx.send(Example {
                input: vec![0.5, f32::from(u8::try_from(i % 2).unwrap())],
                head: i % 2,
                reward: 1.0,
                seq: u64::from(i) + 1,
            })
            .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while learner.handle().snapshot().version == 1 {
            assert!(Instant::now() < deadline, "nothing published");
            std::thread::sleep(Duration::from_millis(2));
        }
        let published = learner.handle().snapshot().version;
        let (reserved, sealed) = mark();
        assert!(
            reserved >= published && sealed.is_none(),
            "{reserved} {sealed:?}"
        );
        drop(tx);
        learner.shutdown();
        let last = learner.handle().snapshot().version;
        let weights = first_weights(&learner);
        assert_eq!(mark(), (last, Some(last)));

        let again = start(Box::new(Backlog(Vec::new())));
        assert_eq!(again.handle().snapshot().version, last);
        assert_eq!(first_weights(&again), weights);
        drop(again);

        // New examples after the checkpoint: a new version above the old.
        let moved = start(Box::new(Backlog(vec![Example {
            input: vec![0.5, 1.0],
            head: 0,
            reward: 0.0,
            seq: 1_000,
        }])));
        assert_eq!(moved.handle().snapshot().version, last + 1);
        assert_eq!(mark(), (last + 1, Some(last + 1)));
    }
}
