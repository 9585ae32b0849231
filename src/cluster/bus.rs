//! The engine's [`EventBus`] over JetStream: a publish is answered once JetStream has stored
//! it (at the stream's replication); the decision or reward id is the message id, so a retry
//! within the duplicate window is stored once and reported as a duplicate.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{message::PublishMessage, stream::LastRawMessageErrorKind};
use prost::Message;

use super::nats::{EventKind, Nats, msg_id};
use crate::{
    engine::bus::{BusFuture, EventBus, Stored},
    error::Error,
    storage::{DecisionRecord, RewardRecord},
};

/// Publishes a replica's events.
#[derive(Debug)]
pub(super) struct JetStreamBus {
    nats: Arc<Nats>,
}

impl JetStreamBus {
    pub(super) fn new(nats: Arc<Nats>) -> Self {
        Self { nats }
    }
}

/// Publishes `payload` on `subject` with message id `id` and waits for JetStream's
/// acknowledgement (bounded by `publish_timeout_ms`).
pub(super) async fn publish(
    nats: &Nats,
    subject: String,
    id: String,
    payload: Vec<u8>,
) -> Result<Stored, Error> {
    let timeout = Duration::from_millis(nats.config().publish_timeout_ms);
    let publish = async {
        let ack = nats
            .js()
            .send_publish(
                subject,
                PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id),
            )
            .await
            .map_err(|e| Error::Unavailable(format!("NATS publish: {e}")))?;
        ack.await
            .map_err(|e| Error::Unavailable(format!("JetStream did not store the event: {e}")))
    };
    let ack = tokio::time::timeout(timeout, publish).await.map_err(|_| {
        Error::Unavailable(format!(
            "JetStream did not acknowledge within {} ms; retry (the id deduplicates)",
            timeout.as_millis()
        ))
    })??;
    Ok(if ack.duplicate {
        Stored::Duplicate
    } else {
        Stored::New
    })
}

impl EventBus for JetStreamBus {
    fn publish_decision(&self, record: DecisionRecord) -> BusFuture<'_, Stored> {
        Box::pin(async move {
            let subject = self
                .nats
                .decision_subject(&record.model, &record.decision_id);
            let id = msg_id(EventKind::Decision, &record.model, &record.decision_id);
            publish(&self.nats, subject, id, record.encode_to_vec()).await
        })
    }

    fn find_decision<'a>(
        &'a self,
        model: &'a str,
        id: &'a str,
    ) -> BusFuture<'a, Option<DecisionRecord>> {
        Box::pin(async move {
            let subject = self.nats.decision_subject(model, id);
            let timeout = Duration::from_millis(self.nats.config().publish_timeout_ms);
            let found = tokio::time::timeout(
                timeout,
                self.nats.stream().get_last_raw_message_by_subject(&subject),
            )
            .await
            .map_err(|_| Error::Unavailable("JetStream did not answer in time".into()))?;
            match found {
                Ok(message) => DecisionRecord::decode(message.payload.as_ref())
                    .map(Some)
                    .map_err(|e| Error::Internal(format!("undecodable decision event: {e}"))),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(Error::Unavailable(format!("JetStream lookup: {e}"))),
            }
        })
    }

    fn publish_reward(&self, record: RewardRecord) -> BusFuture<'_, Stored> {
        Box::pin(async move {
            let subject = self.nats.reward_subject(&record.model);
            let id = msg_id(EventKind::Reward, &record.model, &record.decision_id);
            publish(&self.nats, subject, id, record.encode_to_vec()).await
        })
    }

    fn connected(&self) -> bool {
        self.nats.connected()
    }

    fn serve_when_disconnected(&self) -> bool {
        self.nats.config().serve_when_disconnected
    }
}
