//! The composition root: serves gRPC at once (health NOT_SERVING, calls UNAVAILABLE) while
//! the engine recovers, then serves until the shutdown future completes, then drains and
//! stops everything in order.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use tokio::{net::TcpListener, sync::Mutex};
use tonic::transport::server::TcpIncoming;

use crate::{config::Config, engine::Engine, error::Error, grpc};

/// How often health checks whether the log is writable.
const LOG_HEALTH_PERIOD: Duration = Duration::from_millis(100);

/// Serves `config`'s models on `listener` until `shutdown` completes.
///
/// Startup: the listener serves health (NOT_SERVING) and answers calls with UNAVAILABLE
/// while the engine recovers from the data directory; then health turns SERVING.
/// Shutdown order: health goes NOT_SERVING, tonic drains in-flight calls (for at most
/// `server.drain_timeout_ms`), the expiry sweep stops, the log writer commits what it has,
/// and every learner trains on its queue, publishes and writes its final checkpoint.
///
/// # Errors
/// Recovery fails (the data directory cannot be opened, a checkpoint contradicts the
/// configuration) or the transport fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let slot = Arc::new(OnceLock::new());
    let (router, health) = grpc::router(Arc::clone(&slot), &config).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener: {e}")))?;

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
            grpc::set_health(&health, false).await;
            let _ = drain_tx.send(());
        }
    };
    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    // TCP_NODELAY: HTTP/2 writes a call's frames separately, and Nagle's algorithm against
    // the peer's delayed ACK would hold the second write for ~40 ms.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
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
    let started = tokio::task::spawn_blocking(move || Engine::start(&config)).await;
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
    let _ = slot.set(Arc::clone(&engine));
    {
        let stopping = stopping.lock().await;
        if !*stopping {
            grpc::set_health(&health, true).await;
            tracing::info!(%addr, models, "serving");
        }
    }

    let sweep = {
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(engine.sweep_interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
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
                grpc::set_health(&health, now).await;
                if now {
                    tracing::info!("the log is writable again: SERVING");
                } else {
                    tracing::warn!("the log cannot be written: NOT_SERVING until it can");
                }
            }
        })
    };

    let result = server
        .await
        .map_err(|e| Error::Internal(format!("server task: {e}")))
        .and_then(|r| r);
    sweep.abort();
    log_watch.abort();
    let _ = sweep.await;
    let _ = log_watch.await;
    tokio::task::spawn_blocking(move || background.shutdown(&engine))
        .await
        .map_err(|e| Error::Internal(format!("background shutdown: {e}")))?;
    tracing::info!("stopped");
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
