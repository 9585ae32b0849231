//! Bearer-token authentication, checked at the top of every bandit handler (health,
//! reflection and `/metrics` stay open for probes and scrapers).

use std::{fs, path::Path};

use tonic::{Request, Status};

use crate::{
    config::{AuthConfig, Secret},
    error::Error,
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

fn read_tokens(path: &Path) -> Result<Vec<Vec<u8>>, Error> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::Internal(format!("cannot read token file {}: {e}", path.display())))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect())
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

impl Tokens {
    /// Reads the token files and adds the tokens given in the environment.
    ///
    /// # Errors
    /// A token file cannot be read.
    pub fn load(config: &AuthConfig) -> Result<Self, Error> {
        let mut user = match &config.tokens_file {
            Some(path) => read_tokens(path)?,
            None => Vec::new(),
        };
        user.extend(secrets(&config.tokens));
        let mut admin = match &config.admin_tokens_file {
            Some(path) => read_tokens(path)?,
            None => Vec::new(),
        };
        admin.extend(secrets(&config.admin_tokens));
        Ok(Self { user, admin })
    }

    /// True when calls need a token.
    pub fn enabled(&self) -> bool {
        !self.user.is_empty() || !self.admin.is_empty()
    }

    /// Checks the `authorization: Bearer <token>` header for `role`.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, malformed or unknown token; PERMISSION_DENIED for a
    /// user token on an admin call.
    pub fn check<T>(&self, request: &Request<T>, role: Role) -> Result<(), Status> {
        if !self.enabled() {
            return Ok(());
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("authorization: missing bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization: expected \"Bearer <token>\""))?
            .trim()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", t.parse().unwrap());
        }
        r
    }

    /// Roles, missing and wrong tokens, and the no-token default.
    #[test]
    fn roles() {
        assert!(Tokens::default().check(&request(None), Role::Admin).is_ok());
        let config = AuthConfig {
            tokens: vec![Secret("u1".into())],
            admin_tokens: vec![Secret("a1".into())],
            ..AuthConfig::default()
        };
        let tokens = Tokens::load(&config).unwrap();
        let code = |t: Option<&str>, role| tokens.check(&request(t), role).map_err(|s| s.code());
        assert_eq!(code(Some("Bearer u1"), Role::User), Ok(()));
        assert_eq!(code(Some("Bearer a1"), Role::User), Ok(()));
        assert_eq!(code(Some("Bearer a1"), Role::Admin), Ok(()));
        assert_eq!(
            code(Some("Bearer u1"), Role::Admin),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(Some("Bearer nope"), Role::User),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(Some("u1"), Role::User),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(code(None, Role::User), Err(tonic::Code::Unauthenticated));
        assert!(!format!("{tokens:?}").contains("u1"));
    }
}
