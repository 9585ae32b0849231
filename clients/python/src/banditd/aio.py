"""The asyncio client (grpc.aio). Create it inside the event loop that uses it."""

from __future__ import annotations

import asyncio
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

from . import _wire
from ._config import DEFAULT_TIMEOUT, Settings
from .retry import Attempts, RetryPolicy
from .types import CandidateLike, Decision, ModelInfo, RewardResult, Tls
from .v1 import bandit_pb2 as pb
from .v1 import bandit_pb2_grpc


class AsyncClient:
    """:class:`banditd.Client` for asyncio: the same arguments, the same methods as
    coroutines, the same exceptions. Many calls may be in flight at once on one client."""

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
        self._channel = self._settings.channel(grpc.aio)
        self._stub = bandit_pb2_grpc.BanditServiceStub(self._channel)

    async def choose(
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
        """See :meth:`banditd.Client.choose`."""
        request = _wire.choose_request(
            model, context, candidates, excluded, decision_id, propensity_samples, explain_samples
        )
        return _wire.decision(await self._call("ChooseArm", self._stub.ChooseArm, request, timeout))

    async def reward(
        self,
        model: str,
        decision_id: str,
        reward: float,
        *,
        regret: Optional[float] = None,
        timeout: Optional[float] = None,
    ) -> RewardResult:
        """See :meth:`banditd.Client.reward`."""
        request = _wire.reward_request(model, decision_id, reward, regret)
        return _wire.reward_result(
            await self._call("ReportReward", self._stub.ReportReward, request, timeout)
        )

    async def get_model(self, model: str, *, timeout: Optional[float] = None) -> ModelInfo:
        """See :meth:`banditd.Client.get_model`."""
        request = pb.GetModelRequest(model=model)
        return _wire.model_info(await self._call("GetModel", self._stub.GetModel, request, timeout))

    async def list_models(self, *, timeout: Optional[float] = None) -> List[ModelInfo]:
        """See :meth:`banditd.Client.list_models`."""
        response = await self._call(
            "ListModels", self._stub.ListModels, pb.ListModelsRequest(), timeout
        )
        return [_wire.model_info(m) for m in response.models]

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, method: str, rpc, request, timeout: Optional[float]):
        s = self._settings
        attempts = Attempts(s.retry, method, s.call_timeout(timeout), s.rng)
        while True:
            try:
                return await rpc(request, timeout=attempts.start(), metadata=s.metadata)
            except grpc.aio.AioRpcError as e:
                error, delay = attempts.failed(e)
                if delay is None:
                    raise error from e
                await asyncio.sleep(delay)
