"""Python client for banditd, the self-hosted contextual-bandit decision service.

>>> from banditd import Client
>>> with Client("127.0.0.1:50051") as bandit:              # doctest: +SKIP
...     decision = bandit.choose("wheel", [0.3, -0.8])
...     bandit.reward("wheel", decision.decision_id, 1.0)

:class:`Client` is synchronous, :class:`AsyncClient` uses asyncio (grpc.aio). Both send
deadlines by default, retry only what is safe to retry (see :mod:`banditd.retry`), and raise
:class:`BanditError` subclasses that carry the server's field violations. The generated
stubs are in ``banditd.v1`` (``bandit_pb2``, ``bandit_pb2_grpc``) for anyone who needs them.
"""

from .aio import AsyncClient
from .client import Client
from .errors import (
    AlreadyExists,
    BanditError,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .retry import RetryEvent, RetryPolicy
from .types import Arm, ArmScore, Decision, ModelInfo, RewardResult, Tls

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Arm",
    "ArmScore",
    "AsyncClient",
    "BanditError",
    "Client",
    "DeadlineExceeded",
    "Decision",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryEvent",
    "RetryPolicy",
    "RewardResult",
    "Tls",
    "Unauthenticated",
    "Unavailable",
]
