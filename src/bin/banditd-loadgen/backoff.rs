//! Backing off after the server says "not now" (UNAVAILABLE, RESOURCE_EXHAUSTED), as
//! README.md "Errors" asks of clients: the `google.rpc.RetryInfo` delay when the status
//! carries one, else exponential backoff with full jitter. Without it a worker would spin
//! through its rounds at full speed against a server that is recovering or shedding.

use std::time::Duration;

use rand::Rng;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The first backoff step.
const BASE: Duration = Duration::from_millis(10);
/// The longest backoff step: short enough that a recovered server gets load again promptly.
const CAP: Duration = Duration::from_secs(1);

/// One worker's backoff state.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    /// Consecutive "not now" answers.
    failures: u32,
    /// How long to wait before the next call.
    pending: Duration,
}

/// Whether a call that failed with `code` may be retried later.
pub(crate) fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

impl Backoff {
    /// Records a call's outcome; a "not now" status sets the wait before the next call.
    pub(crate) fn record(&mut self, failure: Option<&Status>) {
        match failure {
            Some(status) if retryable(status.code()) => {
                let ceiling = BASE.saturating_mul(1u32 << self.failures.min(16)).min(CAP);
                let jittered = ceiling.mul_f64(rand::rng().random::<f64>());
                let hinted = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay)
                    .unwrap_or_default();
                self.pending = jittered.max(hinted);
                self.failures = self.failures.saturating_add(1);
            }
            Some(_) | None => {
                self.failures = 0;
                self.pending = Duration::ZERO;
            }
        }
    }

    /// Waits out the pending backoff, if any.
    pub(crate) async fn wait(&mut self) {
        if !self.pending.is_zero() {
            tokio::time::sleep(std::mem::take(&mut self.pending)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps grow to the cap, honour RetryInfo, and reset on success.
    #[test]
    fn grows_honours_retry_info_and_resets() {
        let mut backoff = Backoff::default();
        for _ in 0..40 {
            backoff.record(Some(&Status::unavailable("recovering")));
            assert!(backoff.pending <= CAP);
        }
        assert_eq!(backoff.failures, 40);
        let hinted = Status::with_error_details(
            Code::ResourceExhausted,
            "queue full",
            tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        );
        backoff.record(Some(&hinted));
        assert_eq!(backoff.pending, Duration::from_secs(3));
        backoff.record(Some(&Status::invalid_argument("bad")));
        assert_eq!((backoff.failures, backoff.pending), (0, Duration::ZERO));
    }
}
