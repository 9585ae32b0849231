//! The composition root: serves gRPC at once (health NOT_SERVING, calls UNAVAILABLE) while
//! the engine recovers, then serves until the shutdown future completes, then drains and
//! stops everything in order.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{net::TcpListener, sync::Mutex};

use crate::{
    api::{Api, Serving},
    config::{Config, ModelKind, ServerConfig},
    engine::Engine,
    error::Error,
    grpc, http, metrics,
};

/// How often health checks whether the log is writable.
const LOG_HEALTH_PERIOD: Duration = Duration::from_millis(100);

/// Serves `config`'s models on `listener` (gRPC) and, when `http.addr` is set, on the HTTP/JSON
/// face, until `shutdown` completes.
///
/// Startup: the listener serves health (NOT_SERVING) and answers calls with UNAVAILABLE
/// while the engine recovers from the data directory; then health turns SERVING.
/// Shutdown order: health goes NOT_SERVING, tonic drains in-flight calls (for at most
/// `server.drain_timeout_ms`), the expiry sweep stops, the log writer commits what it has,
/// and every learner trains on its queue, publishes and writes its final checkpoint.
///
/// # Errors
/// Recovery fails (the data directory cannot be opened, a checkpoint contradicts the
/// configuration), a token or TLS file is unusable, the open-file limit leaves no room for
/// connections, or the transport fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let http_listener = match config.http.addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Internal(format!("http.addr {addr}: cannot listen: {e}")))?,
        ),
        None => None,
    };
    run_with_http(config, listener, http_listener, shutdown).await
}

/// [`run`], with the HTTP face on `http_listener` (if given) instead of on `http.addr`; for
/// tests, which bind port 0 and need to know the port.
///
/// # Errors
/// As [`run`].
pub async fn run_with_http(
    config: Config,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    init_metrics(&config);
    let slot = Arc::new(OnceLock::new());
    // One API (engine slot and in-flight limit) behind both transports.
    let api = Api::new(Arc::clone(&slot), config.server.max_in_flight);
    let (router, reporter) = grpc::router(api.clone(), &config).await?;
    let health = Health {
        grpc: reporter,
        http: api.serving().clone(),
    };
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener: {e}")))?;
    // The HTTP face stops when gRPC's shutdown begins (the same signal, below) and drains
    // beside it; `run` waits for both before stopping the engine.
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    // True once shutdown has begun: ends a start still waiting for NATS.
    let mut stopped = http_stop_rx.clone();
    let http_server = match http_listener {
        Some(http_listener) => {
            let http_addr = http_listener
                .local_addr()
                .map_err(|e| Error::Internal(format!("http listener: {e}")))?;
            let mut stop = http_stop_rx;
            let serve = http::serve(
                http_listener,
                http::router(api, &config)?,
                &config,
                async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                },
            )?;
            tracing::info!(%http_addr, "HTTP/JSON face listening");
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let incoming = grpc::incoming(listener, &config, connection_cap(&config.server)?)?;

    // Set once shutdown has begun, under the lock, so recovery finishing late cannot flip
    // health back to SERVING.
    let stopping = Arc::new(Mutex::new(false));
    let (abort_tx, abort_rx) = tokio::sync::oneshot::channel::<()>();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let (health, stopping) = (health.clone(), Arc::clone(&stopping));
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = abort_rx => {}
            }
            let mut stopping = stopping.lock().await;
            *stopping = true;
            health.set(false).await;
            let _ = http_stop_tx.send(true);
            let _ = drain_tx.send(());
        }
    };
    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    let serve = router.serve_with_incoming_shutdown(incoming, signal);
    let server = tokio::spawn(async move {
        tokio::select! {
            result = serve => result.map_err(|e| Error::Internal(format!("transport: {e}"))),
            () = async {
                if drain_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(drain_timeout).await;
            } => {
                tracing::warn!(?drain_timeout, "calls still open after the drain timeout: closing them");
                Ok(())
            }
        }
    });
    tracing::info!(%addr, "listening; recovering models");

    let models = config.models.len();
    // Cluster mode: connect first (NOT_SERVING until NATS answers), then a replica engine.
    let cluster = match &config.cluster {
        Some(settings) => tokio::select! {
            connected = crate::cluster::Cluster::connect(&config, settings) => match connected {
                Ok(cluster) => Some(cluster),
                Err(e) => return abort(abort_tx, server, e).await,
            },
            // NATS may never answer; a shutdown meanwhile must still end the process (nothing
            // has been started that needs stopping yet).
            () = async { drop(stopped.wait_for(|stopped| *stopped).await) } => {
                let result = transports_stopped(server, http_server).await;
                tracing::info!("stopped before NATS answered");
                return result;
            }
        },
        None => None,
    };
    let bus = cluster.as_ref().map(crate::cluster::Cluster::bus);
    let started = tokio::task::spawn_blocking(move || match bus {
        Some(bus) => Engine::start_replica(&config, bus),
        None => Engine::start(&config),
    })
    .await;
    let (engine, background) = match started {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => return abort(abort_tx, server, e).await,
        Err(e) => {
            return abort(
                abort_tx,
                server,
                Error::Internal(format!("recovery panicked: {e}")),
            )
            .await;
        }
    };
    let cluster = match cluster {
        Some(cluster) => Some(cluster.start(&engine).await),
        None => None,
    };
    let _ = slot.set(Arc::clone(&engine));
    {
        let stopping = stopping.lock().await;
        if !*stopping {
            health.set(true).await;
            tracing::info!(%addr, models, "serving");
        }
    }

    let sweep = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            loop {
                // Read each time: models created or updated at runtime change the shortest
                // reward window.
                tokio::time::sleep(engine.sweep_interval()).await;
                engine.expire(tokio::time::Instant::now());
            }
        })
    };
    // While the log cannot be written (a full disk), decisions and rewards are refused:
    // health says NOT_SERVING so that a balancer moves traffic away, and SERVING again once
    // the writer's retry succeeds.
    let log_watch = {
        let (engine, health, stopping) =
            (Arc::clone(&engine), health.clone(), Arc::clone(&stopping));
        tokio::spawn(async move {
            let mut writable = true;
            let mut tick = tokio::time::interval(LOG_HEALTH_PERIOD);
            loop {
                tick.tick().await;
                let now = engine.log_writable();
                if now == writable {
                    continue;
                }
                let stopping = stopping.lock().await;
                if *stopping {
                    return;
                }
                writable = now;
                health.set(now).await;
                if now {
                    tracing::info!("the log is writable again: SERVING");
                } else {
                    tracing::warn!("the log cannot be written: NOT_SERVING until it can");
                }
            }
        })
    };

    let result = transports_stopped(server, http_server).await;
    sweep.abort();
    log_watch.abort();
    let _ = sweep.await;
    let _ = log_watch.await;
    if let Some(cluster) = cluster {
        cluster.shutdown().await;
    }
    tokio::task::spawn_blocking(move || background.shutdown(&engine))
        .await
        .map_err(|e| Error::Internal(format!("background shutdown: {e}")))?;
    tracing::info!("stopped");
    result
}

/// Health on both transports: every change goes through [`Health::set`], so gRPC health and
/// `GET /v1/health` cannot disagree.
#[derive(Debug, Clone)]
struct Health {
    /// `grpc.health.v1`, for the overall status and the bandit service.
    grpc: tonic_health::server::HealthReporter,
    /// What the HTTP face's `GET /v1/health` reads.
    http: Serving,
}

impl Health {
    /// gRPC first: a client that saw the HTTP state change finds gRPC health changed too.
    async fn set(&self, serving: bool) {
        grpc::set_health(&self.grpc, serving).await;
        self.http.set(serving);
    }
}

/// Waits until gRPC (`server`) and the HTTP face (if any) have drained; gRPC's outcome.
async fn transports_stopped(
    server: tokio::task::JoinHandle<Result<(), Error>>,
    http_server: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), Error> {
    let result = server
        .await
        .map_err(|e| Error::Internal(format!("server task: {e}")))
        .and_then(|r| r);
    if let Some(http_server) = http_server {
        let _ = http_server.await;
    }
    result
}

/// Stops serving after a failed startup and returns the startup error.
async fn abort(
    abort_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), Error>>,
    error: Error,
) -> Result<(), Error> {
    tracing::error!(%error, "startup failed");
    let _ = abort_tx.send(());
    let _ = server.await;
    Err(error)
}

/// Creates every model's metric series at zero before anything can happen to them.
fn init_metrics(config: &Config) {
    let models: Vec<metrics::ModelSeries<'_>> = config
        .models
        .iter()
        .map(|m| metrics::ModelSeries {
            name: &m.name,
            arms: (m.kind == ModelKind::FixedArms).then_some(m.arms.as_slice()),
            weight_layers: m.network.hidden_layers.len() + 1,
        })
        .collect();
    metrics::init_series(&models);
}

/// `server.max_connections`, lowered to what the soft open-file limit leaves after the
/// descriptors open now and `server.reserved_fds`, so that connections can never take the
/// descriptors the log, the checkpoints and `/metrics` need.
///
/// # Errors
/// The limit leaves no descriptor at all for connections.
fn connection_cap(server: &ServerConfig) -> Result<usize, Error> {
    let Some(limit) = fd_limit() else {
        return Ok(server.max_connections);
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count) as u64;
    let reserved = server.reserved_fds as u64;
    let available = limit.saturating_sub(open).saturating_sub(reserved);
    if available == 0 {
        return Err(Error::Internal(format!(
            "server.max_connections: the open-file limit ({limit}) leaves no descriptor for \
             connections after the {open} open now and server.reserved_fds ({reserved}); raise \
             it (ulimit -n, systemd LimitNOFILE=) or lower server.reserved_fds"
        )));
    }
    let cap = usize::try_from(available)
        .unwrap_or(usize::MAX)
        .min(server.max_connections);
    if cap < server.max_connections {
        tracing::warn!(
            configured = server.max_connections,
            cap,
            fd_limit = limit,
            open,
            reserved,
            "server.max_connections lowered to what the open-file limit allows"
        );
    }
    Ok(cap)
}

/// The soft limit on open files, or `None` when unlimited or unknown.
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Raises the soft limit on open files to the hard limit, so that connections, the log and
/// the checkpoints do not run out of descriptors at a distribution's default of 1024 while
/// the hard limit allows far more; returns the limit before and after. Call once at start.
/// (Two syscalls through `libc`, already in the dependency tree, rather than another crate.)
///
/// # Errors
/// The limit cannot be read or set (the returned error says which).
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}
