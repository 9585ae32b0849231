//! `impl BanditService`: each handler admits the call (in-flight limit), converts the
//! request, calls the engine, converts back. Tokens were checked, and failures are counted, by
//! the wrapper in `auth.rs` before the handler runs.
//!
//! Decisions run inline on the tokio worker: one batch-1 forward pass is a few microseconds
//! with one thread, less than handing work to `spawn_blocking` costs (see README.md
//! "Performance"), so it is cheaper to do than to move.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status};

use crate::{
    decisions::RewardOutcome,
    engine::{Engine, ModelSpec},
    error::Error,
    proto::{self as pb, bandit_service_server::BanditService},
};

/// The gRPC face of an [`Engine`]. The engine arrives once recovery has finished; until
/// then every call is UNAVAILABLE (and health says NOT_SERVING).
#[derive(Debug, Clone)]
pub struct BanditGrpc {
    /// Set once by `server::run` when recovery is done; read by every call.
    engine: Arc<OnceLock<Arc<Engine>>>,
    /// One permit per bandit call in flight, across connections; none left = shed.
    in_flight: Arc<Semaphore>,
}

impl BanditGrpc {
    /// Serves the engine `engine` will hold, with at most `max_in_flight` calls at once.
    pub fn new(engine: Arc<OnceLock<Arc<Engine>>>, max_in_flight: usize) -> Self {
        Self {
            engine,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
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
}

#[tonic::async_trait]
impl BanditService for BanditGrpc {
    async fn choose_arm(
        &self,
        request: Request<pb::ChooseArmRequest>,
    ) -> Result<Response<pb::ChooseArmResponse>, Status> {
        let (engine, _permit) = self.admit()?;
        let decision = engine.choose_arm(request.into_inner().into()).await?;
        Ok(Response::new(pb::ChooseArmResponse::from(
            decision.as_ref(),
        )))
    }

    async fn report_reward(
        &self,
        request: Request<pb::ReportRewardRequest>,
    ) -> Result<Response<pb::ReportRewardResponse>, Status> {
        let (engine, _permit) = self.admit()?;
        let outcome = engine.report_reward(request.into_inner().into()).await?;
        Ok(Response::new(pb::ReportRewardResponse {
            duplicate: matches!(outcome, RewardOutcome::Duplicate(_)),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let (engine, _permit) = self.admit()?;
        let pb::GetModelRequest { model } = request.into_inner();
        let status = engine.model_status(&model)?;
        Ok(Response::new(status.into()))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let (engine, _permit) = self.admit()?;
        let models = engine.list_models().into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn create_model(
        &self,
        request: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let spec = ModelSpec::try_from(request.into_inner())?;
        let status = self
            .detached(|engine| async move { engine.create_model(spec).await })
            .await?;
        Ok(Response::new(status.into()))
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let pb::UpdateModelRequest { model, settings } = request.into_inner();
        let status = self
            .detached(|engine| async move { engine.update_model(&model, &settings).await })
            .await?;
        Ok(Response::new(status.into()))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let pb::DeleteModelRequest {
            model,
            drop_checkpoints,
        } = request.into_inner();
        self.detached(|engine| async move { engine.delete_model(&model, drop_checkpoints).await })
            .await?;
        Ok(Response::new(pb::DeleteModelResponse {}))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let (engine, _permit) = self.admit()?;
        let pb::ListCheckpointsRequest { model } = request.into_inner();
        let checkpoints = engine.list_checkpoints(&model).await?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: checkpoints.into_iter().map(Into::into).collect(),
        }))
    }

    async fn rollback_model(
        &self,
        request: Request<pb::RollbackModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let pb::RollbackModelRequest { model, version } = request.into_inner();
        let status = self
            .detached(|engine| async move { engine.rollback_model(&model, version).await })
            .await?;
        Ok(Response::new(status.into()))
    }
}
