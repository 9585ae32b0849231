//! The crate's error types. Nothing here knows gRPC: the one mapping to status codes is in
//! `grpc::convert`.

/// What went wrong with a request or inside the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; `field` is its path (`context[3]`, `candidates[1].id`).
    #[error("{field}: {detail}")]
    InvalidArgument {
        /// Path of the offending field.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// No model by this name is configured.
    #[error("model: no model named {0:?}")]
    ModelNotFound(String),
    /// No pending decision has this id (never made, expired, or evicted).
    #[error("decision_id: no pending decision {0:?} (unknown, expired or evicted)")]
    DecisionNotFound(String),
    /// The decision already has a different reward.
    #[error("reward: decision {id:?} already has reward {existing}, not {offered}")]
    RewardConflict {
        /// The decision id.
        id: String,
        /// The reward already accepted.
        existing: f64,
        /// The reward offered now.
        offered: f64,
    },
    /// A retry of a decision id asks something else than the decision it names (other
    /// context, candidates or exclusions).
    #[error(
        "decision_id: decision {id:?} was made for a different request (context, candidates or excluded_arm_ids differ); use a new id for a new request"
    )]
    RetryMismatch {
        /// The decision id.
        id: String,
    },
    /// A decision id names a decision whose window has closed but which is still in the
    /// retained log: a new decision may not take it.
    #[error(
        "decision_id: {id:?} was used by a decision that is still in the log (its reward window has closed); use a new id"
    )]
    DecisionIdUsed {
        /// The decision id.
        id: String,
    },
    /// CreateModel names a model that exists with another specification.
    #[error(
        "name: a model named {0:?} exists with another specification; delete it first or choose another name"
    )]
    ModelExists(String),
    /// UpdateModel asks for a change the model cannot take while it serves.
    #[error("{field}: {detail}")]
    ChangeRefused {
        /// The setting that cannot change.
        field: String,
        /// Why.
        detail: String,
    },
    /// RollbackModel names a checkpoint version that is not retained.
    #[error(
        "version: model {model:?} has no retained checkpoint {version} (ListCheckpoints lists them)"
    )]
    CheckpointNotFound {
        /// The model.
        model: String,
        /// The version asked for.
        version: u64,
    },
    /// A bounded queue is full; the caller may retry later.
    #[error("{0} is full; retry later")]
    Overloaded(&'static str),
    /// The service cannot take the call now (recovering at startup, or shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A bug, a numeric failure inside candle, or a storage failure at startup; details are
    /// logged, not sent to clients.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// An [`Error::InvalidArgument`] for `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("invalid config: {0}")]
    Parse(String),
    /// No `[[models]]` entry.
    #[error("invalid config: at least one [[models]] entry is needed")]
    NoModels,
    /// A setting is out of range.
    #[error("invalid config: model {model:?}: {field}: {why}")]
    Invalid {
        /// The model's name (empty for process-wide settings).
        model: String,
        /// The setting.
        field: String,
        /// Why it is refused.
        why: String,
    },
}
