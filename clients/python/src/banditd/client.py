"""The synchronous client (thread-safe: one per process is enough)."""

from __future__ import annotations

import time
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import grpc

from . import _wire
from ._config import DEFAULT_TIMEOUT, Settings
from .retry import Attempts, RetryPolicy
from .types import CandidateLike, Decision, ModelInfo, RewardResult, Tls
from .v1 import bandit_pb2 as pb
from .v1 import bandit_pb2_grpc


class Client:
    """A connection to banditd.

    ``target`` is ``host:port``. ``token`` is sent as ``authorization: Bearer <token>``.
    ``tls``: ``None`` for plaintext, ``True`` for TLS with the system's roots, or a
    :class:`Tls`. ``timeout`` is each call's deadline in seconds, retries included (a call
    may override it). ``retry``: a :class:`RetryPolicy` (default ``RetryPolicy()``).
    ``options`` are passed to the gRPC channel.

    Every method raises a :class:`banditd.BanditError` subclass on failure.
    """

    def __init__(
        self,
        target: str,
        *,
        token: Optional[str] = None,
        tls: Union[Tls, bool, None] = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        options: Sequence[Tuple[str, object]] = (),
    ) -> None:
        self._settings = Settings(target, token, tls, timeout, retry, options)
        self._channel = self._settings.channel(grpc)
        self._stub = bandit_pb2_grpc.BanditServiceStub(self._channel)

    def choose(
        self,
        model: str,
        context: Iterable[float],
        *,
        candidates: Optional[Iterable[CandidateLike]] = None,
        excluded: Optional[Iterable[str]] = None,
        decision_id: Optional[str] = None,
        propensity_samples: int = 0,
        explain_samples: int = 0,
        timeout: Optional[float] = None,
    ) -> Decision:
        """Which arm to show for ``context``.

        ``candidates``: arm ids (fixed-arm models; none = every configured arm), or
        :class:`Arm` / ``(id, features)`` (per-arm-feature models). ``excluded``: arm ids
        never to choose. ``decision_id``: your id for the decision; without one the client
        makes a UUID, so retries return the same decision. ``propensity_samples`` /
        ``explain_samples``: see the proto (the propensity, and each arm's posterior mean and
        spread).
        """
        request = _wire.choose_request(
            model, context, candidates, excluded, decision_id, propensity_samples, explain_samples
        )
        return _wire.decision(self._call("ChooseArm", self._stub.ChooseArm, request, timeout))

    def reward(
        self,
        model: str,
        decision_id: str,
        reward: float,
        *,
        regret: Optional[float] = None,
        timeout: Optional[float] = None,
    ) -> RewardResult:
        """Reports the reward of a decision. The same reward again is fine
        (``duplicate=True``); a different one raises :class:`AlreadyExists`."""
        request = _wire.reward_request(model, decision_id, reward, regret)
        return _wire.reward_result(
            self._call("ReportReward", self._stub.ReportReward, request, timeout)
        )

    def get_model(self, model: str, *, timeout: Optional[float] = None) -> ModelInfo:
        """One model's configuration and counters (an admin token when any is configured)."""
        request = pb.GetModelRequest(model=model)
        return _wire.model_info(self._call("GetModel", self._stub.GetModel, request, timeout))

    def list_models(self, *, timeout: Optional[float] = None) -> List[ModelInfo]:
        """Every configured model (an admin token when any is configured)."""
        response = self._call("ListModels", self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_wire.model_info(m) for m in response.models]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, rpc, request, timeout: Optional[float]):
        s = self._settings
        attempts = Attempts(s.retry, method, s.call_timeout(timeout), s.rng)
        while True:
            try:
                return rpc(request, timeout=attempts.start(), metadata=s.metadata)
            except grpc.RpcError as e:
                error, delay = attempts.failed(e)
                if delay is None:
                    raise error from e
                time.sleep(delay)
