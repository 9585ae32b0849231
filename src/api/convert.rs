//! Wire <-> domain conversions, and the one mapping from [`Error`] to a gRPC [`Status`]
//! (which the HTTP face renders as its JSON error body).
//!
//! Conversions destructure the proto messages without `..`, so a field added to the proto
//! breaks the build here, where it must be handled.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    config::{
        LearnerConfig, ModelConfig, ModelKind as ConfigKind, NetworkConfig, OptimizerConfig,
        PendingConfig, PolicyConfig, RewardsConfig,
    },
    decisions::Decision,
    engine::{Candidate, CheckpointInfo, ChooseArm, ModelSpec, ModelStatus, ReportReward},
    error::Error,
    policy::holdout::{self, GroupStats},
    proto as pb,
};

impl From<pb::ChooseArmRequest> for ChooseArm {
    fn from(req: pb::ChooseArmRequest) -> Self {
        let pb::ChooseArmRequest {
            model,
            context,
            candidates,
            excluded_arm_ids,
            decision_id,
            propensity_samples,
            explain_samples,
            default_arm_id,
        } = req;
        Self {
            model,
            context,
            candidates: candidates
                .into_iter()
                .map(|pb::Arm { id, features }| Candidate { id, features })
                .collect(),
            excluded_arm_ids,
            decision_id,
            propensity_samples,
            explain_samples,
            default_arm_id,
        }
    }
}

impl From<&Decision> for pb::ChooseArmResponse {
    fn from(d: &Decision) -> Self {
        Self {
            decision_id: d.id.clone(),
            arm_id: d.arm_id().to_owned(),
            scores: d
                .scored()
                .enumerate()
                .map(|(i, (arm_id, score))| {
                    let spread = d.explanation.as_ref().and_then(|e| e.get(i));
                    pb::ArmScore {
                        arm_id: arm_id.to_owned(),
                        score,
                        posterior_mean: spread.map(|s| s.mean),
                        posterior_std: spread.map(|s| s.std),
                    }
                })
                .collect(),
            model_version: d.model_version,
            propensity: d.propensity,
            holdout: d.holdout,
        }
    }
}

impl From<pb::ReportRewardRequest> for ReportReward {
    fn from(req: pb::ReportRewardRequest) -> Self {
        let pb::ReportRewardRequest {
            model,
            decision_id,
            reward,
            regret,
        } = req;
        Self {
            model,
            decision_id,
            reward,
            regret,
        }
    }
}

impl TryFrom<pb::CreateModelRequest> for ModelSpec {
    type Error = Error;
    fn try_from(req: pb::CreateModelRequest) -> Result<Self, Error> {
        let pb::CreateModelRequest { spec } = req;
        let pb::ModelSpec {
            name,
            kind,
            context_dim,
            arms,
            arm_feature_dim,
            hidden_layers,
            settings,
        } = spec.ok_or_else(|| Error::invalid("spec", "is required"))?;
        let kind = match pb::ModelKind::try_from(kind) {
            Ok(pb::ModelKind::FixedArms) => Some(ConfigKind::FixedArms),
            Ok(pb::ModelKind::PerArmFeatures) => Some(ConfigKind::PerArmFeatures),
            // The engine names the field: the same message as an absent kind.
            Ok(pb::ModelKind::Unspecified) | Err(_) => None,
        };
        let usize_of = |n: u32| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Self {
            name,
            kind,
            context_dim: usize_of(context_dim),
            arms,
            arm_feature_dim: usize_of(arm_feature_dim),
            hidden_layers: hidden_layers.into_iter().map(usize_of).collect(),
            settings,
        })
    }
}

impl From<CheckpointInfo> for pb::CheckpointInfo {
    fn from(c: CheckpointInfo) -> Self {
        let CheckpointInfo {
            version,
            created_ms,
            training_steps,
            rewards,
        } = c;
        Self {
            version,
            created_ms,
            training_steps,
            rewards,
        }
    }
}

fn group(g: GroupStats) -> pb::GroupStats {
    pb::GroupStats {
        rewards: g.n,
        reward_sum: g.sum,
        reward_mean: g.mean,
    }
}

fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl From<ModelStatus> for pb::ModelInfo {
    fn from(s: ModelStatus) -> Self {
        let ModelStatus {
            config,
            model_version,
            decisions,
            rewards,
            training_steps,
            pending_decisions,
            awaiting_reward,
            treatment,
            control,
        } = s;
        let lift = holdout::lift(&treatment, &control);
        let drop_rates = config.effective_drop_rates();
        // Destructured without `..` down to the fields: a new setting must be placed here.
        let ModelConfig {
            name,
            kind,
            context_dim,
            arms,
            arm_feature_dim,
            seed,
            network:
                NetworkConfig {
                    hidden_layers,
                    drop_rates: _,
                    concrete_dropout: _,
                    drop_rates_shrink_after: _,
                    heteroscedastic: _,
                },
            policy:
                PolicyConfig {
                    kind: policy,
                    epsilon,
                    propensity_samples,
                    bayesian_last_layer: _,
                    neural_linear: _,
                    holdout,
                },
            optimizer:
                OptimizerConfig {
                    kind: _,
                    learning_rate,
                    batch_size,
                    updates_per_reward,
                    replay_capacity,
                    prior_strength,
                    decay_half_life,
                },
            learner:
                LearnerConfig {
                    max_step_backlog: _,
                    publish_every_steps: _,
                    publish_interval_ms: _,
                    refit: _,
                    reward_std_growth_limit: _,
                    learner_nice: _,
                },
            rewards:
                RewardsConfig {
                    reward_range: _,
                    on_reward_out_of_range: _,
                },
            pending:
                PendingConfig {
                    reward_window_seconds,
                    default_reward,
                    pending_capacity: _,
                },
            unknown: _,
        } = config;
        Self {
            name,
            kind: match kind {
                ConfigKind::FixedArms => pb::ModelKind::FixedArms,
                ConfigKind::PerArmFeatures => pb::ModelKind::PerArmFeatures,
            } as i32,
            context_dim: u32_of(context_dim),
            arm_feature_dim: u32_of(arm_feature_dim),
            arm_ids: arms,
            hidden_layers: hidden_layers.into_iter().map(u32_of).collect(),
            drop_rates,
            learning_rate,
            batch_size: u32_of(batch_size),
            updates_per_reward: u32_of(updates_per_reward),
            replay_capacity: u32_of(replay_capacity),
            prior_strength,
            reward_window_seconds,
            default_reward,
            seed,
            model_version,
            decisions,
            rewards,
            training_steps,
            pending_decisions,
            awaiting_reward,
            policy: policy.as_str().to_owned(),
            epsilon,
            propensity_samples: u32_of(propensity_samples),
            holdout_fraction: holdout.map_or(0.0, |h| h.fraction),
            holdout_control: holdout.map_or("", |h| h.control.as_str()).to_owned(),
            treatment: Some(group(treatment)),
            control: Some(group(control)),
            lift: lift.map(|l| l.0),
            lift_ci_low: lift.map(|l| l.1),
            lift_ci_high: lift.map(|l| l.2),
            decay_half_life,
        }
    }
}

/// Longest status message (and `BadRequest` description) sent, in bytes. Messages quote what
/// the client sent (an unknown model name or arm id, as long as `max_message_bytes` allows),
/// and they travel in the trailers: past the client's header-list limit (16 KiB by default in
/// hyper, so in tonic clients) the client never sees the status and the call hangs. 1 KiB,
/// even percent-encoded three times over, leaves the trailers well inside that limit.
pub const MAX_STATUS_TEXT_BYTES: usize = 1024;

/// `text` cut to [`MAX_STATUS_TEXT_BYTES`] at a character boundary, ending in `…` if cut.
fn bounded(mut text: String) -> String {
    if text.len() > MAX_STATUS_TEXT_BYTES {
        let cut = text.floor_char_boundary(MAX_STATUS_TEXT_BYTES - '…'.len_utf8());
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The retry delay a RESOURCE_EXHAUSTED status suggests. What is full drains in about a
/// group commit (milliseconds; tens under fsync on a slow disk) or a call's time (the
/// in-flight limits); 100 ms lets it drain without keeping a client's fallback waiting long.
/// Clients should still back off exponentially with jitter on repeated refusals.
const RETRY_OVERLOADED_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// When to retry after UNAVAILABLE (the log cannot be written, or in cluster mode NATS cannot
/// be reached): a reconnect or a write retry takes about a second.
const RETRY_UNAVAILABLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = bounded(e.to_string());
        match e {
            // The field path also goes out machine-readable, as a google.rpc.BadRequest.
            Error::InvalidArgument { field, detail } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(bounded(field), bounded(detail)),
            ),
            Error::ModelNotFound(_)
            | Error::DecisionNotFound(_)
            | Error::CheckpointNotFound { .. } => Status::not_found(message),
            Error::RewardConflict { .. } | Error::ModelExists(_) | Error::DecisionIdUsed { .. } => {
                Status::already_exists(message)
            }
            Error::RetryMismatch { .. } => Status::failed_precondition(message),
            // The setting's path also goes out machine-readable, as a PreconditionFailure.
            Error::ChangeRefused { field, detail } => Status::with_error_details(
                Code::FailedPrecondition,
                message,
                ErrorDetails::with_precondition_failure_violation(
                    "LIVE_CHANGE",
                    bounded(field),
                    bounded(detail),
                ),
            ),
            // When to retry goes out machine-readable, as a google.rpc.RetryInfo.
            Error::Overloaded(_) => Status::with_error_details(
                Code::ResourceExhausted,
                message,
                ErrorDetails::with_retry_info(Some(RETRY_OVERLOADED_AFTER)),
            ),
            Error::Unavailable(_) => Status::with_error_details(
                Code::Unavailable,
                message,
                ErrorDetails::with_retry_info(Some(RETRY_UNAVAILABLE_AFTER)),
            ),
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

/// The canonical name of a status code, as a metric label.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error variant maps to its documented code, and internal details stay private.
    #[test]
    fn error_codes() {
        let cases = [
            (Error::invalid("context", "x"), Code::InvalidArgument),
            (Error::ModelNotFound("m".into()), Code::NotFound),
            (Error::DecisionNotFound("d".into()), Code::NotFound),
            (
                Error::RewardConflict {
                    id: "d".into(),
                    existing: 1.0,
                    offered: 2.0,
                },
                Code::AlreadyExists,
            ),
            (
                Error::DecisionIdUsed { id: "d".into() },
                Code::AlreadyExists,
            ),
            (
                Error::RetryMismatch { id: "d".into() },
                Code::FailedPrecondition,
            ),
            (
                Error::Overloaded("log writer queue"),
                Code::ResourceExhausted,
            ),
            (Error::Unavailable("m".into()), Code::Unavailable),
            (Error::ModelExists("m".into()), Code::AlreadyExists),
            (
                Error::ChangeRefused {
                    field: "context_dim".into(),
                    detail: "x".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                Error::CheckpointNotFound {
                    model: "m".into(),
                    version: 3,
                },
                Code::NotFound,
            ),
            (Error::Internal("secret detail".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let status = Status::from(error);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("secret"));
        }
        // INVALID_ARGUMENT carries the field path as a BadRequest violation.
        let status = Status::from(Error::invalid(
            "candidates[2].features",
            "expected 8 values, got 3",
        ));
        let violations = status
            .get_details_bad_request()
            .expect("bad request details")
            .field_violations;
        assert_eq!(violations[0].field, "candidates[2].features");
        assert_eq!(violations[0].description, "expected 8 values, got 3");
        // RESOURCE_EXHAUSTED says when to retry.
        let status = Status::from(Error::Overloaded("log writer queue"));
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(RETRY_OVERLOADED_AFTER));
        // So does UNAVAILABLE (log failing; cluster mode: NATS unreachable).
        let status = Status::from(Error::Unavailable("nats".into()));
        let retry = status.get_details_retry_info().expect("retry info");
        assert_eq!(retry.retry_delay, Some(RETRY_UNAVAILABLE_AFTER));
    }

    /// Client values quoted in messages are cut to the bound at a character boundary, in the
    /// message and in the BadRequest description alike; short messages are untouched.
    #[test]
    fn long_messages_are_cut() {
        let long = "é".repeat(5000);
        let status = Status::from(Error::ModelNotFound(long.clone()));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().len() <= MAX_STATUS_TEXT_BYTES);
        assert!(status.message().starts_with("model: no model named \"ééé"));
        assert!(status.message().ends_with('…'));
        let status = Status::from(Error::invalid(
            "candidates[0].id",
            format!("unknown arm {long:?}"),
        ));
        assert!(status.message().len() <= MAX_STATUS_TEXT_BYTES);
        let description = &status
            .get_details_bad_request()
            .expect("details")
            .field_violations[0]
            .description;
        assert!(description.len() <= MAX_STATUS_TEXT_BYTES && description.ends_with('…'));
        assert_eq!(bounded("short".into()), "short");
        let exact = "a".repeat(MAX_STATUS_TEXT_BYTES);
        assert_eq!(bounded(exact.clone()), exact);
    }
}
