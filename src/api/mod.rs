//! The bandit API in its wire types, shared by both transports (`grpc/` and `http/` sit
//! above this and neither imports the other): the proto <-> engine conversions, the one
//! mapping from [`Error`] to a gRPC [`Status`] (the HTTP face turns that status into its JSON
//! error body), bearer tokens and roles, the in-flight limit, and the TLS configuration.
//!
//! Errors are `tonic::Status` on purpose: the HTTP face promises gRPC's error semantics
//! (code, message, `google.rpc` details), so both render one status rather than two mappings
//! that could drift.

mod convert;
mod tls;
mod tokens;

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, Ordering},
};

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::Status;

use crate::{
    decisions::RewardOutcome,
    engine::{Engine, ModelSpec},
    error::Error,
    proto as pb,
};

pub use convert::{MAX_STATUS_TEXT_BYTES, code_name};
pub use tls::server_config as tls_server_config;
pub use tokens::{Role, Tokens};

/// The bandit methods, as metrics name them and with the role each needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `ChooseArm`, `POST /v1/models/{model}:choose`.
    ChooseArm,
    /// `ReportReward`, `POST /v1/models/{model}:reward`.
    ReportReward,
    /// `GetModel`, `GET /v1/models/{model}`.
    GetModel,
    /// `ListModels`, `GET /v1/models`.
    ListModels,
    /// `CreateModel`, `POST /v1/models`.
    CreateModel,
    /// `UpdateModel`, `PATCH /v1/models/{model}`.
    UpdateModel,
    /// `DeleteModel`, `DELETE /v1/models/{model}`.
    DeleteModel,
    /// `ListCheckpoints`, `GET /v1/models/{model}/checkpoints`.
    ListCheckpoints,
    /// `RollbackModel`, `POST /v1/models/{model}:rollback`.
    RollbackModel,
}

impl Method {
    /// The gRPC method name (the `method` label of the request metrics).
    pub fn name(self) -> &'static str {
        match self {
            Self::ChooseArm => "ChooseArm",
            Self::ReportReward => "ReportReward",
            Self::GetModel => "GetModel",
            Self::ListModels => "ListModels",
            Self::CreateModel => "CreateModel",
            Self::UpdateModel => "UpdateModel",
            Self::DeleteModel => "DeleteModel",
            Self::ListCheckpoints => "ListCheckpoints",
            Self::RollbackModel => "RollbackModel",
        }
    }

    /// The role a call needs: model descriptions are administrative (they show the
    /// configuration, seed included), and so are the model changes.
    pub fn role(self) -> Role {
        match self {
            Self::ChooseArm | Self::ReportReward => Role::User,
            Self::GetModel
            | Self::ListModels
            | Self::CreateModel
            | Self::UpdateModel
            | Self::DeleteModel
            | Self::ListCheckpoints
            | Self::RollbackModel => Role::Admin,
        }
    }
}

/// The engine behind one in-flight limit, in wire types. Cheap to clone; every clone shares
/// the engine slot and the limit, so `server.max_in_flight` bounds gRPC and HTTP calls
/// together.
#[derive(Debug, Clone)]
pub struct Api {
    /// Set once by `server::run` when recovery is done; read by every call.
    engine: Arc<OnceLock<Arc<Engine>>>,
    /// One permit per bandit call in flight, across connections and transports; none left =
    /// shed.
    in_flight: Arc<Semaphore>,
    /// What health reports, shared by both transports.
    serving: Serving,
}

/// Whether the server serves: what gRPC health and `GET /v1/health` both report. False until
/// recovery is done, while the log cannot be written, and from the start of shutdown.
/// `server::run` is the only writer and sets it together with gRPC health, so the two
/// transports cannot answer differently.
#[derive(Debug, Clone, Default)]
pub struct Serving(Arc<AtomicBool>);

impl Serving {
    /// Whether the server serves now.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Sets what health reports.
    pub fn set(&self, serving: bool) {
        self.0.store(serving, Ordering::Release);
    }
}

impl Api {
    /// Serves the engine `engine` will hold, with at most `max_in_flight` calls at once.
    /// Until the engine is set every call is UNAVAILABLE.
    pub fn new(engine: Arc<OnceLock<Arc<Engine>>>, max_in_flight: usize) -> Self {
        Self {
            engine,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            serving: Serving::default(),
        }
    }

    /// The health state both transports report (not serving until set).
    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// Takes an in-flight permit (or sheds the call), and returns the engine.
    fn admit(&self) -> Result<(&Engine, SemaphorePermit<'_>), Status> {
        let permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| Error::Overloaded("server in-flight limit"))?;
        let engine = self
            .engine
            .get()
            .map(AsRef::as_ref)
            .ok_or_else(|| Error::Unavailable("recovering at startup".into()))?;
        Ok((engine, permit))
    }

    /// `ChooseArm`.
    ///
    /// # Errors
    /// The status of the engine's error, or of the shed or recovering call.
    pub async fn choose_arm(
        &self,
        request: pb::ChooseArmRequest,
    ) -> Result<pb::ChooseArmResponse, Status> {
        let (engine, _permit) = self.admit()?;
        let decision = engine.choose_arm(request.into()).await?;
        Ok(pb::ChooseArmResponse::from(decision.as_ref()))
    }

    /// `ReportReward`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub async fn report_reward(
        &self,
        request: pb::ReportRewardRequest,
    ) -> Result<pb::ReportRewardResponse, Status> {
        let (engine, _permit) = self.admit()?;
        let outcome = engine.report_reward(request.into()).await?;
        Ok(pb::ReportRewardResponse {
            duplicate: matches!(outcome, RewardOutcome::Duplicate(_)),
        })
    }

    /// `GetModel`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub fn get_model(&self, request: pb::GetModelRequest) -> Result<pb::ModelInfo, Status> {
        let (engine, _permit) = self.admit()?;
        let pb::GetModelRequest { model } = request;
        Ok(engine.model_status(&model)?.into())
    }

    /// `ListModels`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub fn list_models(
        &self,
        request: pb::ListModelsRequest,
    ) -> Result<pb::ListModelsResponse, Status> {
        let pb::ListModelsRequest {} = request;
        let (engine, _permit) = self.admit()?;
        let models = engine.list_models().into_iter().map(Into::into).collect();
        Ok(pb::ListModelsResponse { models })
    }

    /// Runs an admin change on a task of its own, so that a client that gives up (its
    /// deadline, a dropped connection) cannot cancel it halfway: between the registry write
    /// and the learner's restart, a cancelled change would leave a model without a learner.
    async fn detached<T, F>(&self, change: impl FnOnce(Arc<Engine>) -> F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (_, _permit) = self.admit()?;
        let engine = self
            .engine
            .get()
            .cloned()
            .ok_or_else(|| Error::Unavailable("recovering at startup".into()))?;
        let task = tokio::spawn(change(engine));
        let result = task
            .await
            .map_err(|e| Error::Internal(format!("admin task: {e}")))?;
        Ok(result?)
    }

    /// `CreateModel`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub async fn create_model(
        &self,
        request: pb::CreateModelRequest,
    ) -> Result<pb::ModelInfo, Status> {
        let spec = ModelSpec::try_from(request)?;
        let status = self
            .detached(|engine| async move { engine.create_model(spec).await })
            .await?;
        Ok(status.into())
    }

    /// `UpdateModel`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub async fn update_model(
        &self,
        request: pb::UpdateModelRequest,
    ) -> Result<pb::ModelInfo, Status> {
        let pb::UpdateModelRequest { model, settings } = request;
        let status = self
            .detached(|engine| async move { engine.update_model(&model, &settings).await })
            .await?;
        Ok(status.into())
    }

    /// `DeleteModel`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub async fn delete_model(
        &self,
        request: pb::DeleteModelRequest,
    ) -> Result<pb::DeleteModelResponse, Status> {
        let pb::DeleteModelRequest {
            model,
            drop_checkpoints,
        } = request;
        self.detached(|engine| async move { engine.delete_model(&model, drop_checkpoints).await })
            .await?;
        Ok(pb::DeleteModelResponse {})
    }

    /// `ListCheckpoints`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub async fn list_checkpoints(
        &self,
        request: pb::ListCheckpointsRequest,
    ) -> Result<pb::ListCheckpointsResponse, Status> {
        let (engine, _permit) = self.admit()?;
        let pb::ListCheckpointsRequest { model } = request;
        let checkpoints = engine.list_checkpoints(&model).await?;
        Ok(pb::ListCheckpointsResponse {
            checkpoints: checkpoints.into_iter().map(Into::into).collect(),
        })
    }

    /// `RollbackModel`.
    ///
    /// # Errors
    /// As [`Api::choose_arm`].
    pub async fn rollback_model(
        &self,
        request: pb::RollbackModelRequest,
    ) -> Result<pb::ModelInfo, Status> {
        let pb::RollbackModelRequest { model, version } = request;
        let status = self
            .detached(|engine| async move { engine.rollback_model(&model, version).await })
            .await?;
        Ok(status.into())
    }
}
