//! `banditd export --cluster URL`: the decisions stored in the JetStream stream, joined with
//! their rewards as the trainer joins them, as the same JSON lines as the single-process
//! export (`storage::export`). Read-only: it connects as a plain client, reads the stream
//! through an ephemeral consumer up to the last event stored when it started, and creates
//! nothing that outlives it.
//!
//! The join is the trainer's (see [`super::join`]): the first reward of a decision is its
//! reward (a later one, from a retry stored after JetStream's duplicate window, is a
//! duplicate); a `Closed` event ends the decision's wait; a reward stored after its `Closed`
//! event is late and not exported as its reward (nor trained).

use std::{collections::HashMap, io::Write, time::Duration};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use prost::Message;
use tokio_stream::StreamExt;

use crate::{
    config::ClusterConfig,
    error::Error,
    storage::{Closed, ClosedRecord, DecisionRecord, DecisionRow, How, RewardRecord},
};

/// How long the export's consumer outlives a client that went away.
const CONSUMER_IDLE: Duration = Duration::from_secs(30);

fn unreachable(what: &str, url: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NATS at {url}: {what}: {e}"))
}

/// Writes every stored decision of the `models` (all when empty) to `out` as JSON lines, a
/// decision's line when its `Closed` event is read (stream order), the still open ones at
/// the end. Returns the rows written per model.
///
/// # Errors
/// NATS cannot be reached, the stream does not exist, an event does not decode, or `out`
/// fails.
pub async fn export(
    cluster: &ClusterConfig,
    models: &[String],
    out: &mut impl Write,
) -> Result<HashMap<String, u64>, Error> {
    let url = cluster.url.as_str();
    let client = async_nats::ConnectOptions::new()
        .name("banditd-export")
        .connection_timeout(Duration::from_millis(cluster.publish_timeout_ms))
        .connect(super::nats::servers(url)?)
        .await
        .map_err(|e| unreachable("connect", url, e))?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&cluster.stream).await.map_err(|e| {
        Error::Unavailable(format!(
            "no JetStream stream {:?} at {url} (cluster.stream): {e}",
            cluster.stream
        ))
    })?;
    let prefix = format!("{}.", cluster.subject_prefix);
    let filters: Vec<String> = if models.is_empty() {
        vec![format!("{prefix}>")]
    } else {
        models.iter().map(|m| format!("{prefix}{m}.>")).collect()
    };
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subjects: filters,
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: CONSUMER_IDLE,
            ..Default::default()
        })
        .await
        .map_err(|e| unreachable("consumer", url, e))?;
    let mut join = Join::default();
    let mut rows: HashMap<String, u64> = HashMap::new();
    let mut emit = |row: &DecisionRow, out: &mut dyn Write| -> Result<(), Error> {
        let line = serde_json::to_vec(row).map_err(std::io::Error::other);
        line.and_then(|l| out.write_all(&l).and_then(|()| out.write_all(b"\n")))
            .map_err(|e| Error::Internal(format!("cannot write the export: {e}")))?;
        *rows.entry(row.model.clone()).or_default() += 1;
        Ok(())
    };
    if consumer.cached_info().num_pending > 0 {
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unreachable("read", url, e))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| unreachable("read", url, e))?;
            let info = message
                .info()
                .map_err(|e| unreachable("message info", url, e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let Some(rest) = message.subject.as_str().strip_prefix(prefix.as_str()) else {
                continue;
            };
            let mut tokens = rest.split('.');
            let (Some(_model), Some(kind)) = (tokens.next(), tokens.next()) else {
                continue;
            };
            if let Some(row) = join.apply(kind, seq, &message.payload)? {
                emit(&row, out)?;
            }
            if pending == 0 {
                break;
            }
        }
    }
    let mut rest: Vec<(u64, DecisionRow)> = join.open.into_values().collect();
    rest.sort_unstable_by_key(|(seq, _)| *seq);
    for (_, row) in &rest {
        emit(row, out)?;
    }
    Ok(rows)
}

/// The decisions still waiting, by model and id, with their stream sequence.
#[derive(Debug, Default)]
struct Join {
    open: HashMap<(String, String), (u64, DecisionRow)>,
}

impl Join {
    /// Applies the event of `kind` (the subject token: `d`, `r`, `c`) at `seq`; returns the
    /// row it completes.
    fn apply(
        &mut self,
        kind: &str,
        seq: u64,
        payload: &[u8],
    ) -> Result<Option<DecisionRow>, Error> {
        let bad = |e: prost::DecodeError| Error::Internal(format!("undecodable event {seq}: {e}"));
        match kind {
            "d" => {
                let d = DecisionRecord::decode(payload).map_err(bad)?;
                self.open
                    .entry((d.model.clone(), d.decision_id.clone()))
                    .or_insert_with(|| (seq, DecisionRow::from_record(d)));
                Ok(None)
            }
            "r" => {
                let r = RewardRecord::decode(payload).map_err(bad)?;
                if let Some((_, row)) = self.open.get_mut(&(r.model, r.decision_id))
                    && row.reward_ms.is_none()
                {
                    row.reward = r.example.map(|e| e.reward);
                    row.reward_ms = Some(r.at_ms);
                    row.regret = r.regret;
                }
                Ok(None)
            }
            "c" => {
                let c = ClosedRecord::decode(payload).map_err(bad)?;
                let defaulted = c.how() == How::Defaulted;
                let Some((_, mut row)) = self.open.remove(&(c.model.clone(), c.decision_id)) else {
                    return Ok(None);
                };
                // The stream decides, as in the trainer's join: rewarded iff a reward came
                // before this event (the trainer's `how` was its guess when it sent it).
                row.closed = Some(if row.reward_ms.is_some() {
                    Closed::Rewarded
                } else if let Some(e) = c.example.filter(|_| defaulted) {
                    row.reward = Some(e.reward);
                    row.reward_ms = Some(c.at_ms);
                    Closed::Defaulted
                } else {
                    Closed::Dropped
                });
                Ok(Some(row))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::join::tests::{decision, reward},
        storage::ExampleRecord,
    };

    fn closed(id: &str, how: How, default: Option<f64>) -> Vec<u8> {
        ClosedRecord {
            model: "m".into(),
            decision_id: id.into(),
            at_ms: 2,
            how: how as i32,
            example: default.map(|reward| ExampleRecord {
                input: vec![1.0],
                head: 0,
                reward,
            }),
        }
        .encode_to_vec()
    }

    /// Stream order decides, as in the trainer's join: the first reward is the reward, a
    /// close without one is the default, a reward after the close is late (not exported).
    #[test]
    fn joins_as_the_trainer_does() {
        let mut j = Join::default();
        assert!(j.apply("d", 1, &decision("x")).unwrap().is_none());
        assert!(j.apply("d", 2, &decision("y")).unwrap().is_none());
        assert!(j.apply("r", 3, &reward("x", 1.0)).unwrap().is_none());
        assert!(j.apply("r", 4, &reward("x", 5.0)).unwrap().is_none());
        // The trainer guessed "defaulted" when it sent the close; the reward came first.
        let x = j
            .apply("c", 5, &closed("x", How::Defaulted, Some(0.0)))
            .unwrap()
            .unwrap();
        assert_eq!((x.reward, x.closed), (Some(1.0), Some(Closed::Rewarded)));
        let y = j
            .apply("c", 6, &closed("y", How::Defaulted, Some(0.0)))
            .unwrap()
            .unwrap();
        assert_eq!((y.reward, y.closed), (Some(0.0), Some(Closed::Defaulted)));
        assert!(j.apply("r", 7, &reward("y", 1.0)).unwrap().is_none());
        assert!(j.open.is_empty());
        let err = j.apply("d", 8, b"\xff\xff").unwrap_err().to_string();
        assert!(err.contains("undecodable event 8"), "{err}");
    }
}
