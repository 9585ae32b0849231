"""The settings both clients share, checked once."""

from __future__ import annotations

import random
from typing import Any, Optional, Sequence, Tuple, Union

import grpc

from . import _wire
from .retry import RetryPolicy
from .types import Tls

#: A decision sits in an ad or recommendation request path: one second, retries included, is
#: already long there. Callers with a tighter budget pass ``timeout``.
DEFAULT_TIMEOUT = 1.0


class Settings:
    """Target, credentials, deadline and retry policy of a client."""

    def __init__(
        self,
        target: str,
        token: Optional[str],
        tls: Union[Tls, bool, None],
        timeout: float,
        retry: Optional[RetryPolicy],
        options: Sequence[Tuple[str, object]],
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout: must be positive, got {timeout}")
        self.target = target
        self.metadata = _wire.metadata(token)
        self.tls: Optional[Tls] = Tls() if tls is True else (tls or None)
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy()
        self.options = _wire.channel_options(self.tls, options)
        self.credentials: Optional[grpc.ChannelCredentials] = (
            _wire.credentials(self.tls) if self.tls is not None else None
        )
        # Jitter only: no reason for callers to seed it.
        self.rng = random.Random()

    def channel(self, transport: Any) -> Any:
        """A channel to the target from ``transport``: the ``grpc`` module (sync) or
        ``grpc.aio``, which build channels with the same signatures."""
        if self.credentials is None:
            return transport.insecure_channel(self.target, options=self.options)
        return transport.secure_channel(self.target, self.credentials, options=self.options)

    def call_timeout(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else timeout
