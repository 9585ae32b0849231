//! The `banditd` binary: parse flags, set up logs and metrics, bind, serve until a signal.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use banditd::{Config, metrics, shutdown};
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Contextual-bandit decisions over gRPC: Thompson sampling with an MC-dropout reward network.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Model configuration (TOML). Without it, the embedded default runs: models `wheel`
    /// (fixed arms "0".."4", 2-d context) and `items` (per-arm features, 8-d context and items).
    #[arg(long, env = "BANDITD_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides the file's `server.grpc_addr`).
    #[arg(long, env = "BANDITD_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Prometheus `/metrics` listen address (overrides the file's `server.metrics_addr`).
    #[arg(long, env = "BANDITD_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log format; the level comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "BANDITD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print the embedded default configuration as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    // candle asks for the rayon thread count on every matmul and, with RAYON_NUM_THREADS
    // unset, re-reads /proc/cpuinfo each time (~20x slower batch-1 forward). One thread is
    // also what per-request inference wants. Set before any thread exists.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread has been started yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", toml::to_string(&Config::embedded_default())?);
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded_default(),
    };
    if let Some(addr) = cli.grpc_addr {
        config.server.grpc_addr = addr;
    }
    if let Some(addr) = cli.metrics_addr {
        config.server.metrics_addr = addr;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            metrics::install(config.server.metrics_addr).with_context(|| {
                format!("cannot serve metrics on {}", config.server.metrics_addr)
            })?;
            let listener = tokio::net::TcpListener::bind(config.server.grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.grpc_addr))?;
            tracing::info!(metrics = %config.server.metrics_addr, "metrics at /metrics");
            banditd::run(config, listener, shutdown::signal()).await?;
            Ok(())
        })
}
