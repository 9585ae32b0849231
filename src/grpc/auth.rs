//! Bearer-token authentication as a tower service around the bandit service: the token is
//! checked on the request's headers, before any of its body is read, so an unauthenticated
//! client cannot make the server hold its messages (health, reflection and `/metrics` stay
//! open for probes and scrapers). The same wrapper counts every failed bandit call by method
//! and code, from the response's `grpc-status` header, including the failures that happen
//! before a handler runs (a message over `max_message_bytes`).

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    body::Body,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

use crate::{
    api::{Method, Role, Tokens, code_name},
    metrics,
};

/// A bandit method by its HTTP/2 path: its name for metrics, and the role it needs. An
/// unknown path needs a user token too, so that probing for methods is not free.
fn method(path: &str) -> (&'static str, Role) {
    let method = match path.rsplit_once('/').map_or("", |(_, m)| m) {
        "ChooseArm" => Method::ChooseArm,
        "ReportReward" => Method::ReportReward,
        "GetModel" => Method::GetModel,
        "ListModels" => Method::ListModels,
        "CreateModel" => Method::CreateModel,
        "UpdateModel" => Method::UpdateModel,
        "DeleteModel" => Method::DeleteModel,
        "ListCheckpoints" => Method::ListCheckpoints,
        "RollbackModel" => Method::RollbackModel,
        _ => return ("unknown", Role::User),
    };
    (method.name(), method.role())
}

/// The code of a trailers-only response (how tonic answers every failed unary call), if any.
fn failure_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let code = tonic::Code::from_bytes(headers.get("grpc-status")?.as_bytes());
    (code != tonic::Code::Ok).then_some(code)
}

/// The bandit service behind the token check (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Authenticated<S> {
    inner: S,
    tokens: Arc<Tokens>,
}

impl<S> Authenticated<S> {
    /// Wraps `inner`; with no tokens configured every call passes (and is still counted).
    pub(crate) fn new(inner: S, tokens: Tokens) -> Self {
        Self {
            inner,
            tokens: Arc::new(tokens),
        }
    }
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Authenticated<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (name, role) = method(request.uri().path());
        if let Err(status) = self.tokens.check(request.headers(), role) {
            metrics::request_failed(metrics::Transport::Grpc, name, code_name(status.code()));
            // Dropping the request drops its body unread: hyper discards what arrives for it.
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if let Some(code) = failure_code(response.headers()) {
                metrics::request_failed(metrics::Transport::Grpc, name, code_name(code));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths map to their method name and role; unknown ones need a user token.
    #[test]
    fn methods() {
        assert_eq!(
            method("/banditd.v1.BanditService/GetModel"),
            ("GetModel", Role::Admin)
        );
        assert_eq!(
            method("/banditd.v1.BanditService/ChooseArm"),
            ("ChooseArm", Role::User)
        );
        assert_eq!(
            method("/banditd.v1.BanditService/Nope"),
            ("unknown", Role::User)
        );
    }
}
