//! A failed call as HTTP: the gRPC status the shared API answered, rendered as
//! `{"code", "message", "details"}` with the HTTP status the `google.rpc.Code` mapping gives
//! (google/rpc/code.proto), the `google.rpc` details in their JSON form, and `Retry-After`
//! when the status carries a `RetryInfo`.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::api::code_name;

/// The HTTP status of a gRPC code, as google/rpc/code.proto documents it. Exhaustive: a
/// new code breaks the build here.
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // nginx's 499 "client closed request", as code.proto says.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// The JSON error body of `status`: the code by name, the message, and the details a client
/// acts on (`google.rpc.BadRequest` field violations, `google.rpc.RetryInfo`) in the proto3
/// JSON form Google's REST APIs use (`@type`, camelCase, durations as `"0.100s"`).
pub(crate) fn body(status: &Status) -> Value {
    let mut details = Vec::new();
    if let Some(bad) = status.get_details_bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": violations,
        }));
    }
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": format!("{}.{:03}s", delay.as_secs(), delay.subsec_millis()),
        }));
    }
    json!({
        "code": code_name(status.code()),
        "message": status.message(),
        "details": details,
    })
}

/// `status` as a response with the mapped HTTP status.
pub(crate) fn response(status: &Status) -> Response {
    response_with(status, http_status(status.code()))
}

/// `status` as a response with HTTP status `http` (for the few answers where HTTP has a more
/// precise status than the code's mapping: 413 for a body over the limit, 405 for a known
/// path with the wrong method).
pub(crate) fn response_with(status: &Status, http: StatusCode) -> Response {
    let mut response = super::json(http, body(status).to_string().into_bytes());
    let headers = response.headers_mut();
    // Retry-After holds whole seconds (RFC 9110 §10.2.3): the delay rounded up, so a client
    // honouring the header never comes back earlier than the body's retryDelay says.
    if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if status.code() == Code::Unauthenticated {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::ErrorDetails;

    use super::*;

    /// The statuses the brief names map as google.rpc.Code documents.
    #[test]
    fn code_mapping() {
        for (code, http) in [
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 400),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
        ] {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    /// Field violations and the retry delay come out in Google's JSON shapes; Retry-After
    /// rounds up to whole seconds.
    #[test]
    fn details() {
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "context: bad",
            ErrorDetails::with_bad_request_violation("context", "bad"),
        );
        assert_eq!(
            body(&status),
            json!({
                "code": "INVALID_ARGUMENT",
                "message": "context: bad",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "context", "description": "bad"}],
                }],
            })
        );
        let status = Status::with_error_details(
            Code::ResourceExhausted,
            "full",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(100))),
        );
        assert_eq!(body(&status)["details"][0]["retryDelay"], "0.100s");
        let response = response(&status);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
