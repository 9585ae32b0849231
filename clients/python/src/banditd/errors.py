"""Errors raised by the client: one exception class per gRPC code the server documents, each
carrying what the status details say (the field violations of a ``google.rpc.BadRequest``,
the delay of a ``google.rpc.RetryInfo``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple, Type

import grpc
from google.rpc import error_details_pb2, status_pb2

#: The trailer in which gRPC servers send a serialized ``google.rpc.Status`` with details.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One malformed request field: its path (``context[1]``, ``candidates[2].features``)
    and what is wrong with it."""

    field: str
    description: str


class BanditError(Exception):
    """A call failed. Subclasses name the gRPC code; ``code`` holds it too."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: Tuple[FieldViolation, ...] = (),
        retry_delay: Optional[float] = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        #: From a ``google.rpc.BadRequest`` detail (INVALID_ARGUMENT).
        self.field_violations = field_violations
        #: Seconds the server asked the client to wait before retrying (``google.rpc.RetryInfo``,
        #: sent with RESOURCE_EXHAUSTED), or ``None``.
        self.retry_delay = retry_delay
        #: How many times the call was sent before this error was raised.
        self.attempts = attempts

    @property
    def field(self) -> Optional[str]:
        """The path of the first malformed field, if the server named one."""
        return self.field_violations[0].field if self.field_violations else None


class InvalidArgument(BanditError):
    """A malformed request field; see ``field`` / ``field_violations``. Never retried."""


class NotFound(BanditError):
    """An unknown model, or an unknown, expired or evicted decision id."""


class AlreadyExists(BanditError):
    """A different reward for a decision that already has one."""


class FailedPrecondition(BanditError):
    """A retried decision id with a different request (context, candidates or exclusions):
    use a new id for a new request. Never retried."""


class ResourceExhausted(BanditError):
    """A server limit was reached; retried after ``retry_delay`` until the deadline."""


class Unavailable(BanditError):
    """The server is starting, shutting down or unreachable; retried until the deadline."""


class DeadlineExceeded(BanditError):
    """The call's deadline passed."""


class Unauthenticated(BanditError):
    """A missing or unknown bearer token."""


class PermissionDenied(BanditError):
    """A user token on an administrative call (``get_model``, ``list_models``)."""


class Internal(BanditError):
    """A server bug or numeric failure; the details are in the server's log."""


_BY_CODE: Dict[grpc.StatusCode, Type[BanditError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.INTERNAL: Internal,
}


def _details(trailers: Optional[Iterable[Tuple[str, object]]]) -> Optional[status_pb2.Status]:
    for key, value in trailers or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a malformed detail must not hide the status itself
                return None
    return None


def from_rpc_error(error: grpc.RpcError, attempts: int = 1) -> BanditError:
    """The exception for a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or ""  # type: ignore[attr-defined]
    violations: Tuple[FieldViolation, ...] = ()
    retry_delay: Optional[float] = None
    status = _details(error.trailing_metadata())  # type: ignore[attr-defined]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += tuple(
                FieldViolation(v.field, v.description) for v in bad.field_violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_delay = info.retry_delay.ToTimedelta().total_seconds()
    cls = _BY_CODE.get(code, BanditError)
    return cls(code, message, violations, retry_delay, attempts)
