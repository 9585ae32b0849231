//! A no-op gRPC server implementing banditd's proto: the transport ceiling.
//!
//! `ChooseArm` returns the first candidate (the first configured arm when a fixed-arm
//! request names none) with a counter as decision id, `ReportReward` returns OK, and
//! `GetModel` / `ListModels` describe the models of the configuration (the embedded default
//! unless `--config`), so `banditd-loadgen` can run the same load against it as against
//! banditd and report banditd's throughput as a ratio to it:
//!
//! ```sh
//! cargo run --release --example noop_server &                 # 127.0.0.1:50052
//! cargo run --release &                                       # banditd on 127.0.0.1:50051
//! cargo run --release --bin banditd-loadgen -- grpc --workers 64 --connections 4 \
//!     --duration 10s --baseline http://127.0.0.1:50052
//! ```
//!
//! It serves with banditd's transport settings from the configuration's `[server]` section
//! (`banditd::grpc::server_builder`: per-connection call and stream limits, load shedding,
//! request timeout, keepalive, windows), so that the baseline pays for the same transport
//! work; `--plain` serves with tonic's defaults instead (the baseline before 2026-11-30's
//! serving-cost round). It has no token check, metrics or connection cap: those are
//! banditd's own work.
//!
//! (`--baseline builtin` starts the same service inside the load generator instead.) With
//! `--metrics-addr` it exports the process CPU series banditd exports, so that
//! `banditd-loadgen grpc --server-metrics URL --baseline-metrics URL` reports both servers'
//! CPU per decision and their ratio.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use banditd::{Config, harness::NoopService};
use clap::Parser;

/// A gRPC server with banditd's API that does no work.
#[derive(Debug, Parser)]
struct Cli {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:50052")]
    addr: SocketAddr,
    /// A banditd configuration whose models to describe (default: the embedded default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics here, with banditd's process CPU series
    /// (`process_cpu_seconds_total`), for `banditd-loadgen grpc --baseline-metrics`.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Serve with tonic's default settings instead of banditd's `[server]` transport
    /// settings.
    #[arg(long)]
    plain: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded_default(),
    };
    if let Some(addr) = cli.metrics_addr {
        // banditd's own exporter and CPU telemetry, so both servers' CPU is read alike.
        banditd::metrics::install(addr)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let listener = tokio::net::TcpListener::bind(cli.addr)
        .await
        .with_context(|| format!("cannot listen on {}", cli.addr))?;
    eprintln!(
        "no-op banditd API on {} (models: {})",
        listener.local_addr()?,
        config
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut builder = if cli.plain {
        tonic::transport::Server::builder()
    } else {
        banditd::grpc::server_builder(&config.server)
    };
    builder
        .add_service(NoopService::new(&config).into_server())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = tokio::signal::ctrl_c().await;
            },
        )
        .await?;
    Ok(())
}
