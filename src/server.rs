//! The composition root: builds the engine and its learners, serves gRPC until the shutdown
//! future completes, then drains and stops everything in order.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{config::Config, engine::Engine, error::Error, grpc};

/// Serves `config`'s models on `listener` until `shutdown` completes.
///
/// Shutdown order: health goes NOT_SERVING, tonic drains in-flight calls (for at most
/// `server.drain_timeout_ms`), the expiry sweep stops, and every learner trains on what it
/// has queued, publishes and exits.
///
/// # Errors
/// A model cannot be built or the transport fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let (engine, learners) = Engine::start(&config)?;
    let (router, health) = grpc::router(engine.clone()).await?;

    let sweep = {
        let engine = engine.clone();
        let period = engine.sweep_interval();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                engine.expire(tokio::time::Instant::now());
            }
        })
    };

    let addr = listener
        .local_addr()
        .map_err(|e| Error::Internal(format!("listener: {e}")))?;
    grpc::set_health(&health, true).await;
    tracing::info!(%addr, models = config.models.len(), "serving");

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let signal_health = health.clone();
    let serve = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
        shutdown.await;
        grpc::set_health(&signal_health, false).await;
        let _ = drain_tx.send(());
    });
    let drain_timeout = Duration::from_millis(config.server.drain_timeout_ms);
    let result = tokio::select! {
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
    };
    sweep.abort();
    tokio::task::spawn_blocking(move || learners.shutdown())
        .await
        .map_err(|e| Error::Internal(format!("learner shutdown: {e}")))?;
    tracing::info!("stopped");
    result
}
