"""When a failed call is sent again, and after how long.

Only calls that cannot do harm twice are retried, and only on codes that say the server did
not do the work or may be reached later:

- RESOURCE_EXHAUSTED: a limit refused the call before it did anything (no decision was made
  or stored; a reward's decision stays open). The server says how long to wait in a
  ``google.rpc.RetryInfo``; the client never comes back sooner.
- UNAVAILABLE: the server is starting, shutting down or out of reach. ``choose`` always sends
  a decision id (the caller's, or one the client makes), so a retry of a decision the server
  did make returns that same decision instead of drawing a new one; a retried reward that was
  already accepted comes back with ``duplicate=True``.

Everything else (INVALID_ARGUMENT above all: the same request would fail the same way) is
raised at once. Retries stop at ``max_attempts`` or when the next wait would pass the call's
deadline, whichever comes first.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import grpc

from .errors import BanditError, from_rpc_error

#: The codes that are retried (see the module documentation).
RETRYABLE = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class RetryEvent:
    """What ``RetryPolicy.on_retry`` is told before each retry."""

    method: str
    #: The attempt that failed (1 for the first send).
    attempt: int
    error: BanditError
    #: Seconds the client waits before the next attempt.
    delay: float


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a call is retried.

    The wait before retry *n* (n = 1, 2, …) is the server's RetryInfo delay (0 without one)
    plus a uniformly random part in ``[0, min(max_backoff, initial_backoff * multiplier**(n-1)))``:
    the exponential, jittered part spreads out callers that were refused together, so they do
    not come back together.
    """

    #: Sends of one call, the first included; 1 turns retries off.
    max_attempts: int = 4
    initial_backoff: float = 0.05
    multiplier: float = 2.0
    max_backoff: float = 1.0
    #: Called before every retry (for logs or metrics); must not raise.
    on_retry: Optional[Callable[[RetryEvent], None]] = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts: must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 and multiplier >= 1")

    def delay(self, error: BanditError, attempt: int, rng: random.Random) -> Optional[float]:
        """Seconds to wait before retrying after ``attempt`` failed with ``error``, or ``None``
        when the call must not be retried."""
        if error.code not in RETRYABLE or attempt >= self.max_attempts:
            return None
        window = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return (error.retry_delay or 0.0) + rng.uniform(0.0, window)


class Attempts:
    """The bookkeeping of one call's attempts against its deadline (shared by the sync and
    async clients, which differ only in how they wait)."""

    def __init__(
        self, policy: RetryPolicy, method: str, timeout: float, rng: random.Random
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout: must be positive, got {timeout}")
        self._policy = policy
        self._method = method
        self._rng = rng
        self._deadline = time.monotonic() + timeout
        self._attempt = 0

    def start(self) -> float:
        """Counts an attempt; returns the seconds left for it (its gRPC deadline)."""
        self._attempt += 1
        return max(self._deadline - time.monotonic(), 0.0)

    def failed(self, rpc_error: grpc.RpcError) -> Tuple[BanditError, Optional[float]]:
        """The exception for a failed attempt, and the wait before the next one (``None``:
        raise the exception)."""
        error = from_rpc_error(rpc_error, self._attempt)
        delay = self._policy.delay(error, self._attempt, self._rng)
        if delay is not None and time.monotonic() + delay >= self._deadline:
            delay = None  # the retry could not finish in time; fail now, not at the deadline
        if delay is not None and self._policy.on_retry is not None:
            self._policy.on_retry(RetryEvent(self._method, self._attempt, error, delay))
        return error, delay
