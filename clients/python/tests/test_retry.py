"""Which failures are retried and after how long: the policy on its own, then against a real
banditd whose in-flight limit of 1 refuses concurrent calls with RESOURCE_EXHAUSTED and a
RetryInfo of 100 ms."""

from __future__ import annotations

import random
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

import banditd
from banditd import Client, RetryEvent, RetryPolicy
from banditd.errors import STATUS_DETAILS_KEY, from_rpc_error
from banditd.retry import Attempts

# README "Errors": the delay the server's RetryInfo suggests.
SERVER_RETRY_DELAY = 0.1


class FakeRpcError(grpc.RpcError):
    """What a failed call raises, with the parts the client reads."""

    def __init__(
        self, code: grpc.StatusCode, details: str = "", retry_delay: Optional[float] = None
    ):
        self._code, self._details = code, details
        self._trailers = ()
        if retry_delay is not None:
            info = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(nanos=int(retry_delay * 1e9))
            )
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(code=code.value[0], message=details, details=[detail])
            self._trailers = ((STATUS_DETAILS_KEY, status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return self._trailers


def error(code: grpc.StatusCode, retry_delay: Optional[float] = None) -> banditd.BanditError:
    return from_rpc_error(FakeRpcError(code, "x", retry_delay))


def test_policy_retries_only_what_is_safe() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    for code in grpc.StatusCode:
        retried = policy.delay(error(code), 1, rng) is not None
        assert retried == (
            code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
        ), code
    # Attempts are capped, and 1 turns retries off.
    assert policy.delay(error(grpc.StatusCode.UNAVAILABLE), 4, rng) is None
    assert RetryPolicy(max_attempts=1).delay(error(grpc.StatusCode.UNAVAILABLE), 1, rng) is None
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_policy_waits_at_least_the_servers_delay_plus_growing_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.05, multiplier=2.0, max_backoff=0.3)
    rng = random.Random(7)
    exhausted = error(grpc.StatusCode.RESOURCE_EXHAUSTED, SERVER_RETRY_DELAY)
    assert exhausted.retry_delay == pytest.approx(SERVER_RETRY_DELAY)
    for attempt, window in [(1, 0.05), (2, 0.1), (3, 0.2), (4, 0.3), (9, 0.3)]:
        delays = [policy.delay(exhausted, attempt, rng) for _ in range(200)]
        assert all(SERVER_RETRY_DELAY <= d < SERVER_RETRY_DELAY + window for d in delays)
        # Jittered, not constant: callers refused together come back apart.
        assert max(delays) - min(delays) > window / 2
        plain = [policy.delay(error(grpc.StatusCode.UNAVAILABLE), attempt, rng) for _ in range(200)]
        assert all(0.0 <= d < window for d in plain)


def test_no_retry_that_would_pass_the_deadline() -> None:
    """A retry whose wait would end past the deadline is not made: the error comes now."""
    events: List[RetryEvent] = []
    attempts = Attempts(RetryPolicy(on_retry=events.append), "ChooseArm", 0.05, random.Random(1))
    attempts.start()
    failure, delay = attempts.failed(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", 0.1))
    assert delay is None and events == []
    assert isinstance(failure, banditd.ResourceExhausted) and failure.attempts == 1


def concurrent(n: int, call) -> list:
    """Runs ``call(i)`` for i in 0..n on n threads at once; returns results or exceptions."""
    barrier = threading.Barrier(n)

    def run(i: int):
        barrier.wait()
        try:
            return call(i)
        except banditd.BanditError as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


@pytest.fixture
def limited(start_banditd):
    """A banditd taking one bandit call at a time; each decision waits for its fsynced
    commit (milliseconds), so concurrent calls overlap the limit (as in tests/security.rs)."""
    return start_banditd(
        {
            "server": {"max_in_flight": 1},
            "storage": {"durability": "fsync", "sync_decisions": True},
        }
    )


def test_resource_exhausted_carries_retry_info(limited) -> None:
    """Without retries, calls past the limit raise ResourceExhausted with the server's
    RetryInfo delay."""
    with Client(limited.target, retry=RetryPolicy(max_attempts=1), timeout=10) as bandit:
        refused: List[banditd.BanditError] = []
        # Overlap is near certain with 32 threads; a few rounds make a miss impossible in practice.
        for _round in range(10):
            results = concurrent(32, lambda i: bandit.choose("wheel", [0.0, 0.0]))
            refused = [r for r in results if isinstance(r, banditd.BanditError)]
            if refused:
                break
    assert refused, "no call was refused by an in-flight limit of 1"
    for e in refused:
        assert isinstance(e, banditd.ResourceExhausted), e
        assert "in-flight" in e.message
        assert e.retry_delay == pytest.approx(SERVER_RETRY_DELAY)
        assert e.attempts == 1


def test_retries_honour_retry_info(limited) -> None:
    """With retries every call gets through, and every retry after RESOURCE_EXHAUSTED waited
    at least the server's RetryInfo delay; retried decisions and rewards are each made once."""
    events: List[RetryEvent] = []
    lock = threading.Lock()

    def record(event: RetryEvent) -> None:
        with lock:
            events.append(event)

    # Patient enough that 32 callers through a limit of 1 all get in.
    policy = RetryPolicy(max_attempts=50, on_retry=record)
    with Client(limited.target, retry=policy, timeout=60) as bandit:
        before = bandit.get_model("wheel")
        decisions = []
        for _round in range(10):
            decisions += concurrent(32, lambda i: bandit.choose("wheel", [0.1 * (i % 7), 0.5]))
            if events:
                break
        assert events, "no call was retried"
        failed = [d for d in decisions if isinstance(d, Exception)]
        assert not failed, failed
        assert len({d.decision_id for d in decisions}) == len(decisions)
        rewards = concurrent(
            len(decisions), lambda i: bandit.reward("wheel", decisions[i].decision_id, 1.0)
        )
        assert all(r == banditd.RewardResult(duplicate=False) for r in rewards), rewards
        after = bandit.get_model("wheel")
    assert after.decisions - before.decisions == len(decisions)
    assert after.rewards - before.rewards == len(decisions)
    for event in events:
        assert isinstance(event.error, banditd.ResourceExhausted), event
        assert event.error.retry_delay == pytest.approx(SERVER_RETRY_DELAY)
        assert event.delay >= SERVER_RETRY_DELAY
        assert event.method in ("ChooseArm", "ReportReward", "GetModel")


def test_unavailable_is_retried_until_the_attempts_run_out() -> None:
    """Nothing listens on the port: every send fails UNAVAILABLE; the client sends
    ``max_attempts`` times, with backoff, then raises."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections are refused
    events: List[RetryEvent] = []
    policy = RetryPolicy(max_attempts=3, on_retry=events.append)
    with Client(f"127.0.0.1:{port}", retry=policy, timeout=30) as bandit:
        with pytest.raises(banditd.Unavailable) as raised:
            bandit.choose("wheel", [0, 0])
    assert raised.value.attempts == 3
    assert [e.attempt for e in events] == [1, 2]
    assert all(isinstance(e.error, banditd.Unavailable) for e in events)
    # No RetryInfo: the jittered backoff alone, 0.05 s then 0.1 s at most.
    assert events[0].delay < 0.05 and events[1].delay < 0.1
