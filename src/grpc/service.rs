//! `impl BanditService`: each handler converts the request, calls the engine, converts back.
//!
//! Decisions run inline on the tokio worker: one batch-1 forward pass is a few microseconds
//! with one thread, less than handing work to `spawn_blocking` costs (measured; see
//! README.md), so it is cheaper to do than to move.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::code_name;
use crate::{
    decisions::RewardOutcome,
    engine::Engine,
    metrics,
    proto::{self as pb, bandit_service_server::BanditService},
};

/// The gRPC face of an [`Engine`].
#[derive(Debug, Clone)]
pub struct BanditGrpc {
    engine: Arc<Engine>,
}

impl BanditGrpc {
    /// Serves `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

/// Counts a failed call by method and code, and passes the status on.
fn failed(method: &'static str) -> impl Fn(crate::error::Error) -> Status {
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
        let decision = self
            .engine
            .choose_arm(request.into_inner().into())
            .map_err(failed("ChooseArm"))?;
        Ok(Response::new(pb::ChooseArmResponse::from(
            decision.as_ref(),
        )))
    }

    async fn report_reward(
        &self,
        request: Request<pb::ReportRewardRequest>,
    ) -> Result<Response<pb::ReportRewardResponse>, Status> {
        let outcome = self
            .engine
            .report_reward(request.into_inner().into())
            .map_err(failed("ReportReward"))?;
        Ok(Response::new(pb::ReportRewardResponse {
            duplicate: outcome == RewardOutcome::Duplicate,
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let pb::GetModelRequest { model } = request.into_inner();
        let status = self
            .engine
            .model_status(&model)
            .map_err(failed("GetModel"))?;
        Ok(Response::new(status.into()))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self
            .engine
            .list_models()
            .into_iter()
            .map(Into::into)
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}
