//! The HTTP/JSON face, beside gRPC on its own port (`[http] addr`), for callers that cannot
//! use gRPC. The same [`Api`] serves it (engine, in-flight limit, conversions, error
//! mapping), with the same tokens and TLS files; bodies are the proto messages in the proto3
//! JSON mapping (pbjson), errors the gRPC status as JSON (see [`error`]).
//!
//! Routes (`proto/banditd/v1/openapi.yaml` documents them; a test holds the two together):
//! - `POST /v1/models/{model}:choose`: ChooseArm; body a `ChooseArmRequest`.
//! - `POST /v1/models/{model}:reward`: ReportReward; body a `ReportRewardRequest`.
//! - `GET /v1/models/{model}`: GetModel.
//! - `GET /v1/models`: ListModels.
//! - `POST /v1/models`: CreateModel; body a `CreateModelRequest`.
//! - `PATCH /v1/models/{model}`: UpdateModel; body an `UpdateModelRequest`.
//! - `DELETE /v1/models/{model}`: DeleteModel; body a `DeleteModelRequest`, or none.
//! - `GET /v1/models/{model}/checkpoints`: ListCheckpoints.
//! - `POST /v1/models/{model}:rollback`: RollbackModel; body a `RollbackModelRequest`.
//! - `GET /v1/health`: 200 `{"status":"SERVING"}` or 503 `{"status":"NOT_SERVING"}`, what
//!   gRPC health says (one shared state, [`crate::api::Serving`]); no token, as for gRPC
//!   health, so that load balancers and probes can call it.
//!
//! The model comes from the path; a body may repeat it, but a different one is refused.
//! Unknown JSON fields are refused (400 naming the field), unlike the proto3 JSON default of
//! ignoring them: a misspelt optional field would otherwise be dropped without a word.

mod error;
mod serve;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::get,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Serialize, de::DeserializeOwned};
use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt as _};

pub use serve::serve;

use crate::{
    api::{Api, Method, Tokens, code_name},
    config::Config,
    error::Error,
    metrics, proto as pb,
};

/// Every route, as `(HTTP method, path template in the OpenAPI document, bandit method)`.
/// The router below serves exactly these (tests/http_api.rs checks the OpenAPI document
/// against this list and the server against both).
pub const ROUTES: [(&str, &str, Method); 9] = [
    ("POST", "/v1/models/{model}:choose", Method::ChooseArm),
    ("POST", "/v1/models/{model}:reward", Method::ReportReward),
    ("GET", "/v1/models/{model}", Method::GetModel),
    ("GET", "/v1/models", Method::ListModels),
    ("POST", "/v1/models", Method::CreateModel),
    ("PATCH", "/v1/models/{model}", Method::UpdateModel),
    ("DELETE", "/v1/models/{model}", Method::DeleteModel),
    (
        "GET",
        "/v1/models/{model}/checkpoints",
        Method::ListCheckpoints,
    ),
    ("POST", "/v1/models/{model}:rollback", Method::RollbackModel),
];

/// The routes that need no token, as `(HTTP method, path)`: health, for probes and load
/// balancers (gRPC health is open too). Documented in the OpenAPI document like [`ROUTES`].
pub const OPEN_ROUTES: [(&str, &str); 1] = [("GET", "/v1/health")];

/// What every handler needs.
#[derive(Debug, Clone)]
struct Face {
    api: Api,
    tokens: Arc<Tokens>,
    /// `server.max_message_bytes`: the largest body read.
    max_body: usize,
    /// `server.request_timeout_ms`: past it a call answers DEADLINE_EXCEEDED (504).
    timeout: Duration,
}

/// The router of the HTTP face over `api`.
///
/// # Errors
/// A token file cannot be read or holds no token.
pub fn router(api: Api, config: &Config) -> Result<Router, Error> {
    let face = Face {
        api,
        tokens: Arc::new(Tokens::load(&config.auth)?),
        max_body: config.server.max_message_bytes,
        timeout: Duration::from_millis(config.server.request_timeout_ms),
    };
    // `{model}:choose` is one path segment; axum's matcher cannot split it, so POST takes
    // the segment whole and `post_model` splits at the last ':'.
    Ok(Router::new()
        .route(OPEN_ROUTES[0].1, get(health))
        .route("/v1/models", get(list_models).post(create_model))
        .route(
            "/v1/models/{target}",
            get(get_model)
                .post(post_model)
                .patch(update_model)
                .delete(delete_model),
        )
        .route("/v1/models/{model}/checkpoints", get(list_checkpoints))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(face))
}

/// A JSON response.
fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A failed call: counted by transport, method and code, then rendered.
fn failed(method: &'static str, status: &Status, http: Option<StatusCode>) -> Response {
    metrics::request_failed(metrics::Transport::Http, method, code_name(status.code()));
    match http {
        Some(http) => error::response_with(status, http),
        None => error::response(status),
    }
}

/// A successful call's response, in the proto3 JSON mapping.
fn ok<T: Serialize>(method: Method, message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => json(StatusCode::OK, body),
        // Generated impls over plain data; a failure here is a bug, reported as one.
        Err(e) => failed(
            method.name(),
            &Status::from(Error::Internal(format!("json encoding: {e}"))),
            None,
        ),
    }
}

/// Parses a JSON body into `T`; the error names the field (its JSON path) as a
/// `google.rpc.BadRequest` violation.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner().to_string();
        // The path includes the key of an unknown field; "." is the body itself, "?" a
        // syntax error before any key.
        let field = match e.path().to_string() {
            root if root == "." || root == "?" => "body".to_owned(),
            path => path,
        };
        bad_body(field, inner)
    })?;
    de.end()
        .map_err(|e| bad_body("body".into(), e.to_string()))?;
    Ok(parsed)
}

/// INVALID_ARGUMENT for a body that does not parse, with the field as a violation.
fn bad_body(field: String, detail: String) -> Status {
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: {detail}"),
        ErrorDetails::with_bad_request_violation(field, detail),
    )
}

impl Face {
    /// Checks the token for `method`, then reads the body (at most `max_body` bytes).
    async fn admit(
        &self,
        method: Method,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<axum::body::Bytes, Response> {
        self.tokens
            .check(headers, method.role())
            .map_err(|status| failed(method.name(), &status, None))?;
        match Limited::new(body, self.max_body).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                let status = Status::out_of_range(format!(
                    "body: larger than server.max_message_bytes ({} bytes)",
                    self.max_body
                ));
                Err(failed(
                    method.name(),
                    &status,
                    Some(StatusCode::PAYLOAD_TOO_LARGE),
                ))
            }
            Err(e) => Err(failed(
                method.name(),
                &Status::cancelled(format!("body: {e}")),
                None,
            )),
        }
    }

    /// Runs `call` within the request timeout and renders its outcome.
    async fn finish<T: Serialize>(
        &self,
        method: Method,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Response {
        let outcome = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "no answer within server.request_timeout_ms ({} ms)",
                    self.timeout.as_millis()
                )))
            });
        match outcome {
            Ok(message) => ok(method, &message),
            Err(status) => failed(method.name(), &status, None),
        }
    }
}

/// The model named in the path and the one a body may repeat must agree.
fn same_model(path: &str, body: &mut String) -> Result<(), Status> {
    if !body.is_empty() && body != path {
        return Err(Status::from(Error::invalid(
            "model",
            format!("the body names model {body:?} but the path names {path:?}"),
        )));
    }
    path.clone_into(body);
    Ok(())
}

/// `GET /v1/health`: the shared health state; no token, no in-flight permit (a probe must be
/// answered when calls are shed), not counted as a failed call when NOT_SERVING (it is a
/// report, as a gRPC health answer is). `no-store`: a cache between a balancer and the
/// server must not answer for it.
async fn health(State(face): State<Face>) -> Response {
    let (status, body): (_, &'static [u8]) = if face.api.serving().get() {
        (StatusCode::OK, br#"{"status":"SERVING"}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"NOT_SERVING"}"#,
        )
    };
    let mut response = json(status, body.to_vec());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn list_models(State(face): State<Face>, headers: HeaderMap, body: Body) -> Response {
    let method = Method::ListModels;
    if let Err(response) = face.admit(method, &headers, body).await {
        return response;
    }
    let api = face.api.clone();
    face.finish(
        method,
        async move { api.list_models(pb::ListModelsRequest {}) },
    )
    .await
}

async fn get_model(
    State(face): State<Face>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let method = Method::GetModel;
    if let Err(response) = face.admit(method, &headers, body).await {
        return response;
    }
    let api = face.api.clone();
    face.finish(method, async move {
        api.get_model(pb::GetModelRequest { model })
    })
    .await
}

/// `POST /v1/models`: CreateModel (the model is named in the spec).
async fn create_model(State(face): State<Face>, headers: HeaderMap, body: Body) -> Response {
    let method = Method::CreateModel;
    let bytes = match face.admit(method, &headers, body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    match parse::<pb::CreateModelRequest>(&bytes) {
        Ok(request) => {
            let api = face.api.clone();
            face.finish(method, async move { api.create_model(request).await })
                .await
        }
        Err(status) => failed(method.name(), &status, None),
    }
}

/// `PATCH /v1/models/{model}`: UpdateModel.
async fn update_model(
    State(face): State<Face>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let model_of: fn(&mut pb::UpdateModelRequest) -> &mut String = |r| &mut r.model;
    let call = |api: Api, r| async move { api.update_model(r).await };
    let post = Post {
        face: &face,
        method: Method::UpdateModel,
        model: &model,
        headers: &headers,
    };
    post.run(body, model_of, call).await
}

/// `DELETE /v1/models/{model}`: DeleteModel; no body is `drop_checkpoints = false`.
async fn delete_model(
    State(face): State<Face>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let model_of: fn(&mut pb::DeleteModelRequest) -> &mut String = |r| &mut r.model;
    let call = |api: Api, r| async move { api.delete_model(r).await };
    let post = Post {
        face: &face,
        method: Method::DeleteModel,
        model: &model,
        headers: &headers,
    };
    post.run(body, model_of, call).await
}

/// `GET /v1/models/{model}/checkpoints`: ListCheckpoints.
async fn list_checkpoints(
    State(face): State<Face>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let method = Method::ListCheckpoints;
    if let Err(response) = face.admit(method, &headers, body).await {
        return response;
    }
    let api = face.api.clone();
    face.finish(method, async move {
        api.list_checkpoints(pb::ListCheckpointsRequest { model })
            .await
    })
    .await
}

/// `POST /v1/models/{model}:choose`, `:reward` and `:rollback`: the verb after the segment's
/// last ':'.
async fn post_model(
    State(face): State<Face>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match target.rsplit_once(':') {
        Some((model, "choose")) => {
            let model_of: fn(&mut pb::ChooseArmRequest) -> &mut String = |r| &mut r.model;
            let call = |api: Api, r| async move { api.choose_arm(r).await };
            let post = Post {
                face: &face,
                method: Method::ChooseArm,
                model,
                headers: &headers,
            };
            post.run(body, model_of, call).await
        }
        Some((model, "reward")) => {
            let model_of: fn(&mut pb::ReportRewardRequest) -> &mut String = |r| &mut r.model;
            let call = |api: Api, r| async move { api.report_reward(r).await };
            let post = Post {
                face: &face,
                method: Method::ReportReward,
                model,
                headers: &headers,
            };
            post.run(body, model_of, call).await
        }
        Some((model, "rollback")) => {
            let model_of: fn(&mut pb::RollbackModelRequest) -> &mut String = |r| &mut r.model;
            let call = |api: Api, r| async move { api.rollback_model(r).await };
            let post = Post {
                face: &face,
                method: Method::RollbackModel,
                model,
                headers: &headers,
            };
            post.run(body, model_of, call).await
        }
        _ => unknown_route(State(face), headers).await,
    }
}

/// One call on a model with a body (POST, PATCH, DELETE).
struct Post<'a> {
    face: &'a Face,
    method: Method,
    /// The model the path names.
    model: &'a str,
    headers: &'a HeaderMap,
}

impl Post<'_> {
    /// Token, body, parse, the path's model into the request, `call`, response.
    async fn run<Req, Resp, F>(
        self,
        body: Body,
        model_of: fn(&mut Req) -> &mut String,
        call: impl FnOnce(Api, Req) -> F,
    ) -> Response
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Future<Output = Result<Resp, Status>>,
    {
        let Self {
            face,
            method,
            model,
            headers,
        } = self;
        let bytes = match face.admit(method, headers, body).await {
            Ok(bytes) => bytes,
            Err(response) => return response,
        };
        // DELETE may come without a body: every field at its default.
        let bytes: &[u8] = if bytes.is_empty() && method == Method::DeleteModel {
            b"{}"
        } else {
            &bytes
        };
        let request = parse::<Req>(bytes).and_then(|mut request| {
            same_model(model, model_of(&mut request))?;
            Ok(request)
        });
        match request {
            Ok(request) => face.finish(method, call(face.api.clone(), request)).await,
            Err(status) => failed(method.name(), &status, None),
        }
    }
}

/// No such route: NOT_FOUND, after a user token (as gRPC does for an unknown method, so that
/// probing for routes is not free).
async fn unknown_route(State(face): State<Face>, headers: HeaderMap) -> Response {
    if let Err(status) = face.tokens.check(&headers, crate::api::Role::User) {
        return failed("unknown", &status, None);
    }
    failed(
        "unknown",
        &Status::not_found("no such route; see proto/banditd/v1/openapi.yaml"),
        None,
    )
}

/// A known path with a method it does not take: 405 (code UNIMPLEMENTED), after a user
/// token.
async fn wrong_method(State(face): State<Face>, headers: HeaderMap) -> Response {
    if let Err(status) = face.tokens.check(&headers, crate::api::Role::User) {
        return failed("unknown", &status, None);
    }
    failed(
        "unknown",
        &Status::unimplemented("this path does not take this HTTP method"),
        Some(StatusCode::METHOD_NOT_ALLOWED),
    )
}
