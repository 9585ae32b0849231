//! The trainer's join: reads the model's events from the stream in order and turns them into
//! training examples, exactly as the local log's join does. Stream order decides everything,
//! so a new trainer replaying the same events reaches the same examples:
//! - a decision opens a window;
//! - the first reward of an open decision is an example (later ones are duplicates);
//! - a `Closed` event (published by the trainer when a window has passed) closes it: the
//!   model's default reward is an example if no reward came before it; a reward after it is
//!   late and not trained (counted).
//!
//! The join runs on a tokio task; the learner thread reads its output through
//! [`StreamSource`], an [`ExampleSource`].

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::{Receiver, Sender};
use prost::Message;
use tokio::sync::{mpsc, watch};

use super::{
    bus::publish,
    nats::{EventKind, Nats, msg_id},
    reader::{Reader, Restart},
    telemetry,
};
use crate::{
    config::ModelConfig,
    domain::{Example, now_ms},
    error::Error,
    learner::ExampleSource,
    storage::{ClosedRecord, DecisionRecord, ExampleRecord, How, RewardRecord},
};

/// A decision whose window is open.
#[derive(Debug)]
struct Open {
    /// Its stream sequence.
    seq: u64,
    decided_ms: u64,
    input: Vec<f32>,
    head: u32,
    rewarded: bool,
    /// A `Closed` event was published for it (not yet read back).
    close_sent: bool,
}

/// The join's state; shared with the snapshot upload, which asks where a new trainer must
/// start reading.
#[derive(Debug)]
pub(super) struct JoinState {
    model: String,
    default_reward: Option<f64>,
    window_ms: u64,
    /// The last sequence the snapshot this session resumed from covers.
    covered: u64,
    /// Sequences of the examples that snapshot handed over (not emitted again).
    preloaded: HashSet<u64>,
    open: HashMap<String, Open>,
    /// Settled decisions (rewarded or closed) by settling sequence -> decision sequence,
    /// kept until a snapshot covers the settling event.
    settled: BTreeMap<u64, u64>,
    /// The newest examples (the replay window a snapshot ships).
    ring: VecDeque<Example>,
    capacity: usize,
}

impl JoinState {
    /// A join resuming after a snapshot that covers `covered` and hands over `preloaded`.
    pub(super) fn new(model: &ModelConfig, covered: u64, preloaded: &[Example]) -> Self {
        let mut ring =
            VecDeque::with_capacity(model.optimizer.replay_capacity.min(preloaded.len() + 1));
        for e in preloaded
            .iter()
            .rev()
            .take(model.optimizer.replay_capacity)
            .rev()
        {
            ring.push_back(e.clone());
        }
        Self {
            model: model.name.clone(),
            default_reward: model.pending.default_reward,
            window_ms: model.reward_window().as_millis() as u64,
            covered,
            preloaded: preloaded.iter().map(|e| e.seq).collect(),
            open: HashMap::new(),
            settled: BTreeMap::new(),
            ring,
            capacity: model.optimizer.replay_capacity,
        }
    }

    fn emit(&mut self, example: Example) -> Option<Example> {
        if example.seq <= self.covered && self.preloaded.contains(&example.seq) {
            return None;
        }
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(example.clone());
        Some(example)
    }

    /// Applies one event at stream sequence `seq`; returns the example it makes, if any.
    ///
    /// # Errors
    /// The payload does not decode (the event is skipped and counted by the caller).
    pub(super) fn apply(
        &mut self,
        kind: EventKind,
        seq: u64,
        payload: &[u8],
    ) -> Result<Option<Example>, Error> {
        let bad = |e: prost::DecodeError| Error::Internal(format!("undecodable event {seq}: {e}"));
        match kind {
            EventKind::Decision => {
                let d = DecisionRecord::decode(payload).map_err(bad)?;
                let chosen = d.chosen as usize;
                let mut input = d.context;
                if let Some(c) = d.candidates.get(chosen) {
                    input.extend_from_slice(&c.features);
                }
                self.open.entry(d.decision_id).or_insert(Open {
                    seq,
                    decided_ms: d.decided_ms,
                    input,
                    head: d.head,
                    rewarded: false,
                    close_sent: false,
                });
                Ok(None)
            }
            EventKind::Reward => {
                let r = RewardRecord::decode(payload).map_err(bad)?;
                let Some(example) = r.example else {
                    return Ok(None);
                };
                let example = Example {
                    input: example.input,
                    head: example.head,
                    reward: example.reward,
                    seq,
                };
                match self.open.get_mut(&r.decision_id) {
                    Some(open) if !open.rewarded => {
                        open.rewarded = true;
                        self.settled.insert(seq, open.seq);
                        telemetry::joined(&self.model, "reward");
                        Ok(self.emit(example))
                    }
                    Some(_) => {
                        telemetry::not_joined(&self.model, "duplicate");
                        Ok(None)
                    }
                    // Before this session's start: trained already (a snapshot covers it),
                    // wanted for replay only.
                    None if seq <= self.covered => Ok(self.emit(example)),
                    None => {
                        telemetry::not_joined(&self.model, "late");
                        Ok(None)
                    }
                }
            }
            EventKind::Closed => {
                let c = ClosedRecord::decode(payload).map_err(bad)?;
                let Some(open) = self.open.remove(&c.decision_id) else {
                    return Ok(None);
                };
                if open.rewarded {
                    return Ok(None);
                }
                self.settled.insert(seq, open.seq);
                match self.default_reward {
                    Some(reward) => {
                        telemetry::joined(&self.model, "default");
                        Ok(self.emit(Example {
                            input: open.input,
                            head: open.head,
                            reward,
                            seq,
                        }))
                    }
                    None => Ok(None),
                }
            }
        }
    }

    /// Windows that have passed and have no `Closed` event sent yet: marks them sent and
    /// returns the events to publish.
    fn due(&mut self, now: u64) -> Vec<ClosedRecord> {
        let mut out = Vec::new();
        for (id, open) in &mut self.open {
            if open.close_sent || now < open.decided_ms.saturating_add(self.window_ms) {
                continue;
            }
            open.close_sent = true;
            let (how, example) = match (open.rewarded, self.default_reward) {
                (true, _) => (How::Rewarded, None),
                (false, Some(reward)) => (
                    How::Defaulted,
                    Some(ExampleRecord {
                        input: open.input.clone(),
                        head: open.head,
                        reward,
                    }),
                ),
                (false, None) => (How::Dropped, None),
            };
            out.push(ClosedRecord {
                model: self.model.clone(),
                decision_id: id.clone(),
                at_ms: now,
                how: how as i32,
                example,
            });
        }
        out
    }

    fn unsend(&mut self, id: &str) {
        if let Some(open) = self.open.get_mut(id) {
            open.close_sent = false;
        }
    }

    /// Where a trainer resuming from a snapshot that covers `last` must start reading: the
    /// oldest decision that was open and unrewarded at `last`.
    pub(super) fn resume_point(&self, last: u64) -> u64 {
        let open = self
            .open
            .values()
            .filter(|o| o.seq <= last && !o.rewarded)
            .map(|o| o.seq);
        let settled_later = self
            .settled
            .range(last.saturating_add(1)..)
            .map(|(_, &d)| d)
            .filter(|&d| d <= last);
        open.chain(settled_later)
            .min()
            .unwrap_or(last.saturating_add(1))
    }

    /// The replay window up to `last`.
    pub(super) fn replay_window(&self, last: u64) -> Vec<Example> {
        self.ring
            .iter()
            .filter(|e| e.seq <= last)
            .cloned()
            .collect()
    }

    /// A snapshot covering `last` is stored: its settled decisions need not be remembered.
    pub(super) fn uploaded(&mut self, last: u64) {
        self.settled = self.settled.split_off(&last.saturating_add(1));
    }
}

/// How far the join has read (for the learner's catch-up and the lag metric).
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// The stream sequence of the last event applied.
    processed: AtomicU64,
    /// Events of the model still to read.
    pending: AtomicU64,
}

impl Progress {
    /// Progress of a join reading from stream sequence `from` (what lies before it is the
    /// snapshot's: a consumer that is opened again from the stream's start skips it), with
    /// `pending` events of the model to read.
    pub(super) fn new(from: u64, pending: u64) -> Arc<Self> {
        Arc::new(Self {
            processed: AtomicU64::new(from.saturating_sub(1)),
            pending: AtomicU64::new(pending),
        })
    }
}

/// The learner's side of the join.
#[derive(Debug)]
pub(super) struct StreamSource {
    pub(super) rx: Receiver<Example>,
    pub(super) progress: Arc<Progress>,
    /// Told the replay start of every checkpoint the learner writes: the upload trigger.
    pub(super) checkpoints: mpsc::UnboundedSender<u64>,
}

impl ExampleSource for StreamSource {
    fn poll(&mut self, max: usize, timeout: Duration) -> Result<Option<Vec<Example>>, Error> {
        ExampleSource::poll(&mut self.rx, max, timeout)
    }

    fn reached(&self, lsn: u64) -> bool {
        self.rx.is_empty()
            && self
                .progress
                .processed
                .load(Ordering::Acquire)
                .saturating_add(1)
                >= lsn
    }

    fn release_below(&mut self, lsn: u64) {
        let _ = self.checkpoints.send(lsn);
    }

    fn lag(&self) -> u64 {
        self.rx.len() as u64 + self.progress.pending.load(Ordering::Acquire)
    }
}

/// How often due windows are closed: a tenth of the window, between 10 ms and 1 s (as the
/// single-process sweep).
fn sweep_period(model: &ModelConfig) -> Duration {
    (model.reward_window() / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Reads the model's events until `stop`, applying each event and handing examples to `tx`,
/// and publishes `Closed` events for windows that have passed. The reader is opened again
/// right after the last event applied whenever it fails or stalls (see [`super::reader`]);
/// events it delivers again are skipped by sequence, so each is applied once.
pub(super) async fn run(
    nats: Arc<Nats>,
    model: ModelConfig,
    mut reader: Reader,
    state: Arc<Mutex<JoinState>>,
    tx: Sender<Example>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) {
    let name = model.name.clone();
    let mut sweep = tokio::time::interval(sweep_period(&model));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stall_after = reader.stall_after();
    let mut stall_check = tokio::time::interval(stall_after);
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_event = tokio::time::Instant::now();
    loop {
        if !reader.is_open() {
            let from = progress.processed.load(Ordering::Acquire).saturating_add(1);
            let reopened = tokio::select! {
                reopened = reader.reopen(from) => reopened,
                _ = stop.changed() => return,
            };
            if let Err(e) = reopened {
                tracing::warn!(model = %name, error = %e, "cannot read the stream; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
            tracing::info!(model = %name, from, "reading the stream again");
            last_event = tokio::time::Instant::now();
        }
        tokio::select! {
            next = reader.next() => match next {
                Some(Ok(message)) => {
                    last_event = tokio::time::Instant::now();
                    let Ok(info) = message.info() else { continue };
                    let (seq, pending) = (info.stream_sequence, info.pending);
                    if seq <= progress.processed.load(Ordering::Acquire) {
                        continue;
                    }
                    let example = match nats.kind_of(message.subject.as_str(), &name) {
                        Some(kind) => {
                            let applied = state
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .apply(kind, seq, &message.payload);
                            applied.unwrap_or_else(|e| {
                                tracing::error!(model = %name, error = %e, "skipped an event");
                                telemetry::not_joined(&name, "undecodable");
                                None
                            })
                        }
                        None => None,
                    };
                    if let Some(example) = example
                        && tx.send(example).is_err()
                    {
                        return;
                    }
                    progress.processed.store(seq, Ordering::Release);
                    progress.pending.store(pending, Ordering::Release);
                    telemetry::consumer_lag(&name, pending);
                }
                Some(Err(e)) => {
                    tracing::warn!(model = %name, error = %e, "stream read failed; reading again");
                    reader.close(Restart::Error);
                }
                None => {
                    tracing::warn!(model = %name, "the stream's consumer ended; reading again");
                    reader.close(Restart::Error);
                }
            },
            _ = sweep.tick() => {
                let due = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .due(now_ms());
                for closed in due {
                    let id = closed.decision_id.clone();
                    let subject = nats.closed_subject(&name);
                    let mid = msg_id(EventKind::Closed, &name, &id);
                    if let Err(e) = publish(&nats, subject, mid, closed.encode_to_vec()).await {
                        tracing::warn!(model = %name, error = %e, "cannot close a window yet");
                        state
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .unsend(&id);
                    }
                }
            }
            _ = stall_check.tick() => {
                if last_event.elapsed() < stall_after {
                    continue;
                }
                let processed = progress.processed.load(Ordering::Acquire);
                match reader.model_last_seq().await {
                    // Events the consumer should have delivered by now: lost in flight (a
                    // node died) with none after them to show the gap, or a consumer whose
                    // own re-creation is backing off (up to 10 s between attempts).
                    Ok(last) if last > processed => {
                        tracing::warn!(
                            model = %name, processed, last,
                            "the model's stream is ahead and nothing arrived: reading it again"
                        );
                        reader.close(Restart::Stalled);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(model = %name, error = %e, "cannot check for a stall"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::{config::ModelKind, storage::Candidate};

    fn model() -> ModelConfig {
        let mut m = ModelConfig::new("m", ModelKind::FixedArms, 1);
        m.arms = vec!["a".into(), "b".into()];
        m.pending.default_reward = Some(0.0);
        m
    }

    /// A decision event of model "m" (context `[1.0]`, one arm "a").
    pub(in crate::cluster) fn decision(id: &str) -> Vec<u8> {
        DecisionRecord {
            model: "m".into(),
            decision_id: id.into(),
            decided_ms: 0,
            context: vec![1.0],
            candidates: vec![Candidate {
                id: "a".into(),
                features: vec![],
            }],
            chosen: 0,
            head: 0,
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A reward event of model "m" for `id`.
    pub(in crate::cluster) fn reward(id: &str, value: f64) -> Vec<u8> {
        RewardRecord {
            model: "m".into(),
            decision_id: id.into(),
            at_ms: 0,
            regret: None,
            example: Some(ExampleRecord {
                input: vec![1.0],
                head: 0,
                reward: value,
            }),
        }
        .encode_to_vec()
    }

    fn closed(id: &str) -> Vec<u8> {
        ClosedRecord {
            model: "m".into(),
            decision_id: id.into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// One example per decision: the first reward, or the default at the close; duplicates
    /// and late rewards are not examples; a resumed join skips what its snapshot handed over
    /// and starts at the oldest decision open at the snapshot.
    #[test]
    fn joins_once_in_stream_order() {
        let mut s = JoinState::new(&model(), 0, &[]);
        assert!(
            s.apply(EventKind::Decision, 1, &decision("x"))
                .unwrap()
                .is_none()
        );
        assert!(
            s.apply(EventKind::Decision, 2, &decision("y"))
                .unwrap()
                .is_none()
        );
        let e = s
            .apply(EventKind::Reward, 3, &reward("x", 1.0))
            .unwrap()
            .unwrap();
        assert_eq!((e.seq, e.reward), (3, 1.0));
        assert!(
            s.apply(EventKind::Reward, 4, &reward("x", 2.0))
                .unwrap()
                .is_none()
        );
        // y is open and unrewarded at 4: a trainer resuming from a snapshot at 4 starts at 2.
        assert_eq!(s.resume_point(4), 2);
        let d = s
            .apply(EventKind::Closed, 5, &closed("y"))
            .unwrap()
            .unwrap();
        assert_eq!((d.seq, d.reward), (5, 0.0));
        assert!(
            s.apply(EventKind::Reward, 6, &reward("y", 1.0))
                .unwrap()
                .is_none()
        );
        assert_eq!(s.resume_point(4), 2, "y settled after 4");
        assert_eq!(s.resume_point(6), 7);
        s.uploaded(6);
        let window = s.replay_window(6);
        let mut resumed = JoinState::new(&model(), 6, &window);
        // Replaying from 2: y's decision and close come again, but both are handed over.
        resumed
            .apply(EventKind::Decision, 2, &decision("y"))
            .unwrap();
        assert!(
            resumed
                .apply(EventKind::Closed, 5, &closed("y"))
                .unwrap()
                .is_none()
        );
    }
}
