//! `impl BanditService`: each handler hands the request to the shared [`Api`] (in-flight
//! limit, conversion, engine call, conversion back). Tokens were checked, and failures are
//! counted, by the wrapper in `auth.rs` before the handler runs.
//!
//! Decisions run inline on the tokio worker: one batch-1 forward pass is a few microseconds
//! with one thread, less than handing work to `spawn_blocking` costs (see README.md
//! "Performance"), so it is cheaper to do than to move.

use tonic::{Request, Response, Status};

use crate::{
    api::Api,
    proto::{self as pb, bandit_service_server::BanditService},
};

/// The gRPC face of the [`Api`]. The engine arrives once recovery has finished; until then
/// every call is UNAVAILABLE (and health says NOT_SERVING).
#[derive(Debug, Clone)]
pub struct BanditGrpc {
    api: Api,
}

impl BanditGrpc {
    /// Serves `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }
}

#[tonic::async_trait]
impl BanditService for BanditGrpc {
    async fn choose_arm(
        &self,
        request: Request<pb::ChooseArmRequest>,
    ) -> Result<Response<pb::ChooseArmResponse>, Status> {
        self.api
            .choose_arm(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn report_reward(
        &self,
        request: Request<pb::ReportRewardRequest>,
    ) -> Result<Response<pb::ReportRewardResponse>, Status> {
        self.api
            .report_reward(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.api.get_model(request.into_inner()).map(Response::new)
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        self.api
            .list_models(request.into_inner())
            .map(Response::new)
    }

    async fn create_model(
        &self,
        request: Request<pb::CreateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.api
            .create_model(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_model(
        &self,
        request: Request<pb::UpdateModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.api
            .update_model(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        self.api
            .delete_model(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        self.api
            .list_checkpoints(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn rollback_model(
        &self,
        request: Request<pb::RollbackModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        self.api
            .rollback_model(request.into_inner())
            .await
            .map(Response::new)
    }
}
