//! Connecting to a server: over gRPC, plaintext or TLS (with an optional client certificate),
//! or to its HTTP/JSON face (`--transport http`, plaintext HTTP/1.1); a bearer token on every
//! call either way.

use std::{path::Path, time::Duration};

use anyhow::Context;
use banditd::proto::{
    ChooseArmRequest, ChooseArmResponse, GetModelRequest, ModelInfo, ReportRewardRequest,
    ReportRewardResponse, bandit_service_client::BanditServiceClient,
};
use http_body_util::{BodyExt, Full};
use hyper::{Method, body::Bytes, header::HeaderValue};
use hyper_util::{
    client::legacy::{Client as LegacyClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Serialize, de::DeserializeOwned};
use tonic::{
    Code, Request, Response, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use tonic_types::{ErrorDetails, StatusExt as _};

use crate::cli::{ConnectArgs, Transport};

/// A gRPC bandit client that sends the token, if any, with every call.
type GrpcClient = BanditServiceClient<InterceptedService<Channel, Token>>;

/// A bandit client over either transport, with the gRPC client's signatures: an HTTP error
/// comes back as the status its JSON body names (code, message, retry delay), so the driver
/// counts and backs off the same way for both.
#[derive(Debug, Clone)]
pub(crate) enum Client {
    Grpc(GrpcClient),
    Http(HttpClient),
}

impl Client {
    pub(crate) async fn choose_arm(
        &mut self,
        request: ChooseArmRequest,
    ) -> Result<Response<ChooseArmResponse>, Status> {
        match self {
            Self::Grpc(c) => c.choose_arm(request).await,
            Self::Http(c) => {
                let path = format!("/v1/models/{}:choose", c.segment(&request.model));
                c.call(Method::POST, path, Some(&request)).await
            }
        }
    }

    pub(crate) async fn report_reward(
        &mut self,
        request: ReportRewardRequest,
    ) -> Result<Response<ReportRewardResponse>, Status> {
        match self {
            Self::Grpc(c) => c.report_reward(request).await,
            Self::Http(c) => {
                let path = format!("/v1/models/{}:reward", c.segment(&request.model));
                c.call(Method::POST, path, Some(&request)).await
            }
        }
    }

    pub(crate) async fn get_model(
        &mut self,
        request: GetModelRequest,
    ) -> Result<Response<ModelInfo>, Status> {
        match self {
            Self::Grpc(c) => c.get_model(request).await,
            Self::Http(c) => {
                let path = format!("/v1/models/{}", c.segment(&request.model));
                c.call::<(), _>(Method::GET, path, None).await
            }
        }
    }
}

/// The HTTP/JSON face's client: one pool of keep-alive HTTP/1.1 connections (a call in
/// flight holds one, so the pool grows to the number of calls in flight).
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: LegacyClient<HttpConnector, Full<Bytes>>,
    base: String,
    token: Option<HeaderValue>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base", &self.base)
            .finish()
    }
}

impl HttpClient {
    /// A model name as one path segment (percent-encoded where it must be).
    fn segment(&self, model: &str) -> String {
        model
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<&Req>,
    ) -> Result<Response<Resp>, Status> {
        let body = match body {
            Some(body) => serde_json::to_vec(body)
                .map_err(|e| Status::internal(format!("encoding the request: {e}")))?,
            None => Vec::new(),
        };
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, token.clone());
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Status::internal(format!("building the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| Status::unavailable(format!("HTTP: {e}")))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Status::unavailable(format!("HTTP body: {e}")))?
                .to_bytes();
            Ok::<_, Status>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Status::deadline_exceeded("--request-timeout passed"))??;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Response::new)
                .map_err(|e| {
                    Status::internal(format!("HTTP {status}: not the expected JSON: {e}"))
                });
        }
        Err(error_status(status, &bytes))
    }
}

/// The status an HTTP error body names (`{"code", "message", "details"}`), with its
/// RetryInfo delay; a body that is not one becomes UNKNOWN with the HTTP status.
fn error_status(http: hyper::StatusCode, body: &[u8]) -> Status {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Status::unknown(format!("HTTP {http}"));
    };
    let code = (0..=16)
        .map(Code::from_i32)
        .find(|c| value["code"].as_str() == Some(banditd::grpc::code_name(*c)))
        .unwrap_or(Code::Unknown);
    let message = value["message"].as_str().unwrap_or_default().to_owned();
    let delay = value["details"].as_array().and_then(|details| {
        details.iter().find_map(|d| {
            let secs = d["retryDelay"]
                .as_str()?
                .strip_suffix('s')?
                .parse::<f64>()
                .ok()?;
            Duration::try_from_secs_f64(secs).ok()
        })
    });
    match delay {
        Some(delay) => {
            Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(delay)))
        }
        None => Status::new(code, message),
    }
}

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
    /// Set for `--transport http`: the client of the HTTP/JSON face.
    http: Option<HttpClient>,
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{what} {}: cannot read", path.display()))
}

impl Connector {
    /// The endpoint for `url`: TLS when the URL is `https://` or a CA is given.
    ///
    /// # Errors
    /// The URL, the token or a certificate file is unusable.
    pub(crate) fn new(
        url: &str,
        transport: Transport,
        args: &ConnectArgs,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
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
        let http = match transport {
            Transport::Grpc => None,
            Transport::Http => {
                if url.starts_with("https://") || args.ca_cert.is_some() {
                    anyhow::bail!("--transport http drives plaintext HTTP only (no TLS options)");
                }
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(Duration::from_secs(5)));
                Some(HttpClient {
                    client: LegacyClient::builder(TokioExecutor::new()).build(connector),
                    base: url.trim_end_matches('/').to_owned(),
                    token: args
                        .token
                        .as_ref()
                        .map(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())))
                        .transpose()
                        .context("--token / BANDITD_TOKEN: not a valid header value")?,
                    timeout,
                })
            }
        };
        Ok(Self {
            endpoint,
            token,
            http,
        })
    }

    /// `n` independent HTTP/2 connections (gRPC), or the one HTTP/1.1 pool (`--transport
    /// http`: its connections open as calls need them).
    ///
    /// # Errors
    /// A connection cannot be made.
    pub(crate) async fn connect(&self, n: u64) -> anyhow::Result<Vec<Client>> {
        if let Some(http) = &self.http {
            return Ok(vec![Client::Http(http.clone())]);
        }
        let mut clients = Vec::new();
        for _ in 0..n {
            let channel = self
                .endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", self.endpoint.uri()))?;
            clients.push(Client::Grpc(BanditServiceClient::with_interceptor(
                channel,
                self.token.clone(),
            )));
        }
        Ok(clients)
    }
}
