//! `impl BanditService`: each handler converts the request, calls the engine, converts back.
//!
//! Decisions run inline on the tokio worker: one batch-1 forward pass is a few microseconds
//! with one thread, less than handing work to `spawn_blocking` costs (see README.md
//! "Performance"), so it is cheaper to do than to move.

use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};

use super::convert::code_name;
use crate::{
    decisions::RewardOutcome,
    engine::Engine,
    error::Error,
    metrics,
    proto::{self as pb, bandit_service_server::BanditService},
};

/// The gRPC face of an [`Engine`]. The engine arrives once recovery has finished; until
/// then every call is UNAVAILABLE (and health says NOT_SERVING).
#[derive(Debug, Clone)]
pub struct BanditGrpc {
    /// Set once by `server::run` when recovery is done; read by every call.
    engine: Arc<OnceLock<Arc<Engine>>>,
}

impl BanditGrpc {
    /// Serves the engine `slot` will hold.
    pub fn new(engine: Arc<OnceLock<Arc<Engine>>>) -> Self {
        Self { engine }
    }

    fn engine(&self, method: &'static str) -> Result<&Engine, Status> {
        self.engine
            .get()
            .map(AsRef::as_ref)
            .ok_or_else(|| failed(method)(Error::Unavailable("recovering at startup".into())))
    }
}

/// Counts a failed call by method and code, and passes the status on.
fn failed(method: &'static str) -> impl Fn(Error) -> Status {
    move |e| {
        let status = Status::from(e);
        metrics::request_failed(method, code_name(status.code()));
        status
    }
}

#[tonic::async_trait]
impl BanditService for BanditGrpc {
    async fn choose_arm(
        &self,
        request: Request<pb::ChooseArmRequest>,
    ) -> Result<Response<pb::ChooseArmResponse>, Status> {
        const METHOD: &str = "ChooseArm";
        let decision = self
            .engine(METHOD)?
            .choose_arm(request.into_inner().into())
            .await
            .map_err(failed(METHOD))?;
        Ok(Response::new(pb::ChooseArmResponse::from(
            decision.as_ref(),
        )))
    }

    async fn report_reward(
        &self,
        request: Request<pb::ReportRewardRequest>,
    ) -> Result<Response<pb::ReportRewardResponse>, Status> {
        const METHOD: &str = "ReportReward";
        let outcome = self
            .engine(METHOD)?
            .report_reward(request.into_inner().into())
            .await
            .map_err(failed(METHOD))?;
        Ok(Response::new(pb::ReportRewardResponse {
            duplicate: outcome == RewardOutcome::Duplicate,
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        const METHOD: &str = "GetModel";
        let pb::GetModelRequest { model } = request.into_inner();
        let status = self
            .engine(METHOD)?
            .model_status(&model)
            .map_err(failed(METHOD))?;
        Ok(Response::new(status.into()))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .engine("ListModels")?
            .list_models()
            .into_iter()
            .map(Into::into)
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}
