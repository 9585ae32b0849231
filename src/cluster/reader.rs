//! The trainer's reader of one model's events: a JetStream *ordered* consumer (ephemeral, one
//! replica, in memory, no acks) from a stream sequence, opened again where the join stopped
//! whenever it cannot be trusted to deliver the rest.
//!
//! Why not a durable consumer: the trainer never resumes one (a session re-creates it at the
//! snapshot's position), and a replicated pull consumer with `AckPolicy::None` loses events for
//! good when a NATS node dies mid-delivery (the consumer counts them delivered; nothing
//! redelivers them), while a pull request held by a consumer leader that died is answered by
//! nobody. The ordered consumer checks that consumer sequences arrive without a gap and that
//! idle heartbeats keep coming (`cluster.consumer_heartbeat_ms`), and re-creates itself after
//! the last stream sequence it delivered, on a live node, when either fails.
//!
//! Two cases it cannot see are handled here: an error it gives up on (the reader is opened
//! again after the last event the join applied), and events lost at the tail (the next event
//! would show the gap, but none comes). For the second, a reader that has delivered nothing
//! for four heartbeats asks the stream for the model's own last sequence and is opened again
//! only if that is past the last event applied: a model without new events is never
//! re-opened.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    Message,
    consumer::{DeliverPolicy, pull},
    stream::LastRawMessageErrorKind,
};
use tokio_stream::StreamExt;

use super::{nats::Nats, telemetry};
use crate::error::Error;

fn nats_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NATS: {what}: {e}"))
}

/// Reads one model's events in stream order.
pub(super) struct Reader {
    nats: Arc<Nats>,
    model: String,
    /// Consumer names are `<prefix>_<n>`: unique per session (the prefix holds the epoch), so a
    /// consumer left by a killed trainer (it lapses after 30 s idle) never clashes.
    prefix: String,
    opened: u32,
    messages: Option<pull::Ordered>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("model", &self.model)
            .field("prefix", &self.prefix)
            .field("opened", &self.opened)
            .field("open", &self.messages.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a reader is opened again (the `why` label of `banditd_cluster_consumer_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Restart {
    /// The consumer returned an error it does not recover from itself, or ended.
    Error,
    /// Nothing arrived for [`Reader::stall_after`] while the model's stream holds newer events.
    Stalled,
}

impl Restart {
    fn label(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Stalled => "stalled",
        }
    }
}

impl Reader {
    /// Opens a reader of `model`'s events from stream sequence `from`, for the trainer session
    /// of `epoch`; returns it with the number of the model's events from there.
    ///
    /// # Errors
    /// NATS cannot create the consumer.
    pub(super) async fn open(
        nats: Arc<Nats>,
        model: &str,
        epoch: u64,
        from: u64,
    ) -> Result<(Self, u64), Error> {
        let mut reader = Self {
            nats,
            model: model.to_owned(),
            prefix: format!("trainer_{model}_e{epoch}"),
            opened: 0,
            messages: None,
        };
        let pending = reader.reopen(from).await?;
        Ok((reader, pending))
    }

    /// Whether the reader has a consumer (after [`Reader::close`] it needs
    /// [`Reader::reopen`]).
    pub(super) fn is_open(&self) -> bool {
        self.messages.is_some()
    }

    /// Creates a consumer delivering from stream sequence `from`; returns the number of the
    /// model's events from there.
    ///
    /// # Errors
    /// NATS cannot create the consumer (the reader stays closed).
    pub(super) async fn reopen(&mut self, from: u64) -> Result<u64, Error> {
        self.opened += 1;
        let heartbeat = Duration::from_millis(self.nats.config().consumer_heartbeat_ms);
        let consumer = self
            .nats
            .stream()
            .create_consumer(pull::OrderedConfig {
                name: Some(format!("{}_{}", self.prefix, self.opened)),
                filter_subject: self.nats.model_filter(&self.model),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                // The client's pull requests expire after this, and ask for an idle heartbeat
                // every half of it: the client counts a heartbeat missed after two periods of
                // silence, and the ordered consumer re-creates itself at the second miss.
                max_expires: heartbeat * 2,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("consumer", e))?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| nats_err("consumer", e))?;
        self.messages = Some(messages);
        Ok(pending)
    }

    /// Drops the consumer (counted by `why`); the caller opens it again after the last event
    /// it applied.
    pub(super) fn close(&mut self, why: Restart) {
        self.messages = None;
        telemetry::consumer_restarted(&self.model, why.label());
    }

    /// The next event; `None` while closed or once the consumer ended. Cancel-safe (the
    /// consumer keeps its state between polls).
    pub(super) async fn next(&mut self) -> Option<Result<Message, Error>> {
        let messages = self.messages.as_mut()?;
        messages
            .next()
            .await
            .map(|m| m.map_err(|e| nats_err("read", e)))
    }

    /// How long the reader may deliver nothing before the model's last sequence is checked:
    /// four heartbeats, the time the consumer itself takes to notice a silent server.
    pub(super) fn stall_after(&self) -> Duration {
        Duration::from_millis(self.nats.config().consumer_heartbeat_ms) * 4
    }

    /// The stream sequence of the model's newest event (0: none), from the stream's index by
    /// subject (one lookup, no consumer). Owns what it needs: the reader itself is not `Sync`,
    /// so no borrow of it may be held across the lookup.
    ///
    /// # Errors
    /// NATS does not answer.
    pub(super) fn model_last_seq(
        &self,
    ) -> impl Future<Output = Result<u64, Error>> + Send + 'static {
        let nats = Arc::clone(&self.nats);
        let filter = self.nats.model_filter(&self.model);
        async move {
            match nats.stream().get_last_raw_message_by_subject(&filter).await {
                Ok(message) => Ok(message.sequence),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
                Err(e) => Err(nats_err("last event", e)),
            }
        }
    }
}
