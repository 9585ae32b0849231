//! `impl BanditService`: each handler admits the call (token, in-flight limit), converts the
//! request, calls the engine, converts back.
//!
//! Decisions run inline on the tokio worker: one batch-1 forward pass is a few microseconds
//! with one thread, less than handing work to `spawn_blocking` costs (see README.md
//! "Performance"), so it is cheaper to do than to move.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status};

use super::{
    auth::{Role, Tokens},
    convert::code_name,
};
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
    tokens: Arc<Tokens>,
    /// One permit per bandit call in flight, across connections; none left = shed.
    in_flight: Arc<Semaphore>,
}

impl BanditGrpc {
    /// Serves the engine `engine` will hold, with at most `max_in_flight` calls at once.
    pub fn new(engine: Arc<OnceLock<Arc<Engine>>>, tokens: Tokens, max_in_flight: usize) -> Self {
        Self {
            engine,
            tokens: Arc::new(tokens),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    /// Authenticates, takes an in-flight permit (or sheds the call), and returns the engine.
    fn admit<T>(
        &self,
        method: &'static str,
        role: Role,
        request: &Request<T>,
    ) -> Result<(&Engine, SemaphorePermit<'_>), Status> {
        self.tokens
            .check(request, role)
            .inspect_err(|s| metrics::request_failed(method, code_name(s.code())))?;
        let permit = self
            .in_flight
            .try_acquire()
            .map_err(|_| failed(method)(Error::Overloaded("server in-flight limit")))?;
        let engine =
            self.engine.get().map(AsRef::as_ref).ok_or_else(|| {
                failed(method)(Error::Unavailable("recovering at startup".into()))
            })?;
        Ok((engine, permit))
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
        let (engine, _permit) = self.admit(METHOD, Role::User, &request)?;
        let decision = engine
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
        let (engine, _permit) = self.admit(METHOD, Role::User, &request)?;
        let outcome = engine
            .report_reward(request.into_inner().into())
            .await
            .map_err(failed(METHOD))?;
        Ok(Response::new(pb::ReportRewardResponse {
            duplicate: matches!(outcome, RewardOutcome::Duplicate(_)),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        const METHOD: &str = "GetModel";
        let (engine, _permit) = self.admit(METHOD, Role::Admin, &request)?;
        let pb::GetModelRequest { model } = request.into_inner();
        let status = engine.model_status(&model).map_err(failed(METHOD))?;
        Ok(Response::new(status.into()))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let (engine, _permit) = self.admit("ListModels", Role::Admin, &request)?;
        let models = engine.list_models().into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }
}
