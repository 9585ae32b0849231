//! Bearer-token authentication as a tower service around the bandit service: the token is
//! checked on the request's headers, before any of its body is read, so an unauthenticated
//! client cannot make the server hold its messages (health, reflection and `/metrics` stay
//! open for probes and scrapers). The same wrapper counts every failed bandit call by method
//! and code, from the response's `grpc-status` header, including the failures that happen
//! before a handler runs (a message over `max_message_bytes`).

use std::{
    convert::Infallible,
    fs,
    path::Path,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    body::Body,
    codegen::{BoxFuture, Service, http},
    server::NamedService,
};

use super::convert::code_name;
use crate::{
    config::{AuthConfig, Secret},
    error::Error,
    metrics,
};

/// Who may call what. With no tokens at all, everyone may call everything.
#[derive(Clone, Default)]
pub struct Tokens {
    user: Vec<Vec<u8>>,
    admin: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("user", &self.user.len())
            .field("admin", &self.admin.len())
            .finish()
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// ChooseArm, ReportReward.
    User,
    /// GetModel, ListModels.
    Admin,
}

/// Reads a token file. A file that holds no token refuses the start: a configured token
/// source that yields nothing would otherwise leave the server open without a word.
fn read_tokens(setting: &str, path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let text = fs::read_to_string(path).map_err(|e| {
        Error::Internal(format!(
            "auth.{setting} {}: cannot read: {e}",
            path.display()
        ))
    })?;
    let tokens: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if tokens.is_empty() {
        return Err(Error::Internal(format!(
            "auth.{setting} {}: no token in it (only blank lines and # comments); refusing to \
             start without authentication: add a token, or remove the setting to run without",
            path.display()
        )));
    }
    Ok(tokens)
}

fn secrets(list: &[Secret]) -> impl Iterator<Item = Vec<u8>> + '_ {
    list.iter()
        .map(|s| s.0.trim().as_bytes().to_vec())
        .filter(|t| !t.is_empty())
}

/// Equality whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization` value, if it uses the Bearer scheme. The scheme is
/// case-insensitive (RFC 7235 §2.1, RFC 6750 §2.1) and separated by one or more spaces.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

impl Tokens {
    /// Reads the token files and adds the tokens given in the environment.
    ///
    /// # Errors
    /// A token file cannot be read or holds no token.
    pub fn load(config: &AuthConfig) -> Result<Self, Error> {
        let mut user = match &config.tokens_file {
            Some(path) => read_tokens("tokens_file", path)?,
            None => Vec::new(),
        };
        user.extend(secrets(&config.tokens));
        let mut admin = match &config.admin_tokens_file {
            Some(path) => read_tokens("admin_tokens_file", path)?,
            None => Vec::new(),
        };
        admin.extend(secrets(&config.admin_tokens));
        Ok(Self { user, admin })
    }

    /// True when calls need a token.
    pub fn enabled(&self) -> bool {
        !self.user.is_empty() || !self.admin.is_empty()
    }

    /// Checks the `authorization: Bearer <token>` header for `role`. Messages never quote
    /// what the client sent.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, malformed or unknown token; PERMISSION_DENIED for a
    /// user token on an admin call.
    pub fn check(&self, headers: &http::HeaderMap, role: Role) -> Result<(), Status> {
        if !self.enabled() {
            return Ok(());
        }
        let header = headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| Status::unauthenticated("authorization: missing bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?
            .as_bytes();
        let is = |list: &[Vec<u8>]| {
            list.iter()
                .fold(false, |found, t| found | constant_time_eq(t, token))
        };
        let (user, admin) = (is(&self.user), is(&self.admin));
        match role {
            _ if admin => Ok(()),
            Role::User if user => Ok(()),
            Role::Admin if user && self.admin.is_empty() => Ok(()),
            Role::Admin if user => Err(Status::permission_denied(
                "authorization: this call needs an admin token",
            )),
            Role::User | Role::Admin => {
                Err(Status::unauthenticated("authorization: unknown token"))
            }
        }
    }
}

/// A bandit method by its HTTP/2 path: its name for metrics, and the role it needs. An
/// unknown path needs a user token too, so that probing for methods is not free.
fn method(path: &str) -> (&'static str, Role) {
    match path.rsplit_once('/').map_or("", |(_, m)| m) {
        "ChooseArm" => ("ChooseArm", Role::User),
        "ReportReward" => ("ReportReward", Role::User),
        "GetModel" => ("GetModel", Role::Admin),
        "ListModels" => ("ListModels", Role::Admin),
        "CreateModel" => ("CreateModel", Role::Admin),
        "UpdateModel" => ("UpdateModel", Role::Admin),
        "DeleteModel" => ("DeleteModel", Role::Admin),
        "ListCheckpoints" => ("ListCheckpoints", Role::Admin),
        "RollbackModel" => ("RollbackModel", Role::Admin),
        _ => ("unknown", Role::User),
    }
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
            metrics::request_failed(name, code_name(status.code()));
            // Dropping the request drops its body unread: hyper discards what arrives for it.
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            if let Some(code) = failure_code(response.headers()) {
                metrics::request_failed(name, code_name(code));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert(http::header::AUTHORIZATION, t.parse().unwrap());
        }
        h
    }

    /// Roles, missing and wrong tokens, the scheme in any case, and the no-token default.
    #[test]
    fn roles() {
        assert!(Tokens::default().check(&headers(None), Role::Admin).is_ok());
        let config = AuthConfig {
            tokens: vec![Secret("u1".into())],
            admin_tokens: vec![Secret("a1".into())],
            ..AuthConfig::default()
        };
        let tokens = Tokens::load(&config).unwrap();
        let code = |t: Option<&str>, role| tokens.check(&headers(t), role).map_err(|s| s.code());
        assert_eq!(code(Some("Bearer u1"), Role::User), Ok(()));
        assert_eq!(code(Some("bearer u1"), Role::User), Ok(()));
        assert_eq!(code(Some("BEARER  u1"), Role::User), Ok(()));
        assert_eq!(code(Some("Bearer a1"), Role::User), Ok(()));
        assert_eq!(code(Some("Bearer a1"), Role::Admin), Ok(()));
        assert_eq!(
            code(Some("Bearer u1"), Role::Admin),
            Err(tonic::Code::PermissionDenied)
        );
        for bad in [
            "Bearer nope",
            "u1",
            "Basic u1",
            "Bearer",
            "Bearer ",
            "Beareru1",
        ] {
            assert_eq!(
                code(Some(bad), Role::User),
                Err(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
        assert_eq!(code(None, Role::User), Err(tonic::Code::Unauthenticated));
        assert!(!format!("{tokens:?}").contains("u1"));
    }

    /// A token file with only comments and blank lines refuses the start, naming the file.
    #[test]
    fn empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        fs::write(&path, "# rotate monthly\n\n   \n# t0k3n\n").unwrap();
        for admin in [false, true] {
            let mut config = AuthConfig::default();
            if admin {
                config.admin_tokens_file = Some(path.clone());
            } else {
                config.tokens_file = Some(path.clone());
            }
            let err = Tokens::load(&config).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string()) && err.contains("no token"),
                "{err}"
            );
        }
        fs::write(&path, "# rotate monthly\nt0k3n\n").unwrap();
        let config = AuthConfig {
            tokens_file: Some(path),
            ..AuthConfig::default()
        };
        assert!(Tokens::load(&config).unwrap().enabled());
    }

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
