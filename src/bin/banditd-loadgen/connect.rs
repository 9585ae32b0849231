//! Connecting to a server: plaintext or TLS (with an optional client certificate), and a
//! bearer token on every call.

use std::{path::Path, time::Duration};

use anyhow::Context;
use banditd::proto::bandit_service_client::BanditServiceClient;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::cli::ConnectArgs;

/// A bandit client that sends the token, if any, with every call.
pub(crate) type Client = BanditServiceClient<InterceptedService<Channel, Token>>;

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone)]
pub(crate) struct Token(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Token(***)"
        } else {
            "Token(none)"
        })
    }
}

impl Interceptor for Token {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How to reach one server.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    endpoint: Endpoint,
    token: Token,
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what} {}: cannot read", path.display()))
}

impl Connector {
    /// The endpoint for `url`: TLS when the URL is `https://` or a CA is given.
    ///
    /// # Errors
    /// The URL, the token or a certificate file is unusable.
    pub(crate) fn new(url: &str, args: &ConnectArgs, timeout: Duration) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| {
                format!("invalid target URL {url:?} (expected e.g. http://127.0.0.1:50051)")
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") || args.ca_cert.is_some() {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &args.ca_cert {
                tls = tls.ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
            }
            match (&args.client_cert, &args.client_key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(
                        read("--client-cert", cert)?,
                        read("--client-key", key)?,
                    ));
                }
                (None, None) => {}
                _ => anyhow::bail!("--client-cert and --client-key go together"),
            }
            if let Some(domain) = &args.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            endpoint = endpoint
                .tls_config(tls)
                .with_context(|| format!("{url}: TLS configuration"))?;
        }
        let token = match &args.token {
            None => Token(None),
            Some(token) => {
                Token(Some(format!("Bearer {}", token.trim()).parse().context(
                    "--token / BANDITD_TOKEN: not a valid header value",
                )?))
            }
        };
        Ok(Self { endpoint, token })
    }

    /// `n` independent HTTP/2 connections.
    ///
    /// # Errors
    /// A connection cannot be made.
    pub(crate) async fn connect(&self, n: u64) -> anyhow::Result<Vec<Client>> {
        let mut clients = Vec::new();
        for _ in 0..n {
            let channel = self
                .endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", self.endpoint.uri()))?;
            clients.push(BanditServiceClient::with_interceptor(
                channel,
                self.token.clone(),
            ));
        }
        Ok(clients)
    }
}
