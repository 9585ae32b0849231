"""Decide and reward through the sync client against a real banditd: both model kinds, the
optional outputs, idempotent retries, and every bad field arriving as an exception with its
path."""

from __future__ import annotations

import math
import time
import uuid

import grpc
import pytest

import banditd
from banditd import Arm, Client, RetryPolicy
from banditd._config import DEFAULT_TIMEOUT

WHEEL_ARMS = ["0", "1", "2", "3", "4"]


def item(i: int) -> Arm:
    return Arm(f"sku-{i}", [1.0 if j == i else 0.0 for j in range(8)])


@pytest.fixture
def retries():
    """A client's retry log: ``(client, events)``; events stay empty when nothing retried."""
    events = []

    def make(server) -> Client:
        return Client(server.target, retry=RetryPolicy(on_retry=events.append))

    return make, events


def best(decision: banditd.Decision) -> str:
    return max(decision.scores, key=lambda s: s.score).arm_id


def test_fixed_arms_decide_and_reward(server) -> None:
    """A fixed-arm model scores every configured arm and picks the best under its sample."""
    with Client(server.target) as bandit:
        decision = bandit.choose("wheel", [0.3, -0.8])
        assert decision.arm_id in WHEEL_ARMS
        assert [s.arm_id for s in decision.scores] == WHEEL_ARMS
        assert decision.arm_id == best(decision)
        assert all(math.isfinite(s.score) for s in decision.scores)
        # The client made the id (a UUID), so a retry would return this very decision.
        assert uuid.UUID(decision.decision_id)
        assert bandit.reward("wheel", decision.decision_id, 1.0) == banditd.RewardResult(False)


def test_per_arm_features_decide_and_reward(server) -> None:
    """A per-arm model scores the request's candidates, in request order, minus the excluded."""
    with Client(server.target) as bandit:
        decision = bandit.choose(
            "items",
            [0, 0, 0, 0, 0, 0, 0, 0.5],
            candidates=[item(0), ("sku-1", [0, 1, 0, 0, 0, 0, 0, 0]), item(2)],
            excluded=["sku-1"],
        )
        assert [s.arm_id for s in decision.scores] == ["sku-0", "sku-2"]
        assert decision.arm_id == best(decision)
        assert not bandit.reward("items", decision.decision_id, 0.0, regret=0.5).duplicate


def test_fixed_arm_subset_and_explanation(server) -> None:
    """Named candidates of a fixed-arm model; propensity and posterior spread when asked."""
    with Client(server.target) as bandit:
        decision = bandit.choose(
            "wheel", [0.1, 0.2], candidates=["3", "1"], propensity_samples=20, explain_samples=10
        )
        assert [s.arm_id for s in decision.scores] == ["3", "1"]
        # (1 + wins) / (S + 1) with S = 20: never 0, at most 1.
        assert decision.propensity is not None and 1 / 21 <= decision.propensity <= 1.0
        for score in decision.scores:
            assert score.posterior_mean is not None and math.isfinite(score.posterior_mean)
            assert score.posterior_std is not None and score.posterior_std >= 0.0
        plain = bandit.choose("wheel", [0.1, 0.2])
        assert plain.propensity is None
        assert all(s.posterior_mean is None and s.posterior_std is None for s in plain.scores)


def test_same_decision_id_is_idempotent(server) -> None:
    """A retry with the caller's decision id returns the stored decision, not a new sample;
    the id with another request is FAILED_PRECONDITION; the same reward twice is a
    duplicate, a different one ALREADY_EXISTS."""
    decision_id = f"order-{uuid.uuid4()}"
    with Client(server.target) as bandit:
        first = bandit.choose("wheel", [0.5, 0.5], decision_id=decision_id)
        assert first.decision_id == decision_id
        again = bandit.choose("wheel", [0.5, 0.5], decision_id=decision_id)
        assert again == first
        with pytest.raises(banditd.FailedPrecondition) as mismatch:
            bandit.choose("wheel", [-0.5, 0.9], decision_id=decision_id)
        assert mismatch.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert decision_id in mismatch.value.message
        assert not bandit.reward("wheel", decision_id, 0.25).duplicate
        assert bandit.reward("wheel", decision_id, 0.25).duplicate
        with pytest.raises(banditd.AlreadyExists) as conflict:
            bandit.reward("wheel", decision_id, 0.75)
        assert conflict.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "0.25" in conflict.value.message


NAN = float("nan")
FEATURES_8 = [0.0] * 8

# (call, expected field path, words the description must contain). The paths are the
# server's (src/engine.rs); the client passes the request through unchecked.
BAD_FIELDS = [
    (lambda b: b.choose("", [0, 0]), "model", "empty"),
    (lambda b: b.choose("wheel", [0.1]), "context", "expected 2 values, got 1"),
    (lambda b: b.choose("wheel", [0.1, NAN]), "context[1]", "not finite"),
    (lambda b: b.choose("wheel", [0.0, 1e30]), "context[1]", "max_abs_value"),
    (lambda b: b.choose("wheel", [0, 0], candidates=["9"]), "candidates[0].id", "unknown arm"),
    (lambda b: b.choose("wheel", [0, 0], candidates=["0", "0"]), "candidates[1].id", "duplicate"),
    (
        lambda b: b.choose("wheel", [0, 0], candidates=[Arm("0", [1.0])]),
        "candidates[0].features",
        "no arm features",
    ),
    (lambda b: b.choose("wheel", [0, 0], excluded=["x"]), "excluded_arm_ids[0]", "unknown arm"),
    (
        lambda b: b.choose("wheel", [0, 0], excluded=WHEEL_ARMS),
        "excluded_arm_ids",
        "every candidate is excluded",
    ),
    (lambda b: b.choose("wheel", [0, 0], decision_id="d" * 300), "decision_id", "limit of 256"),
    (
        lambda b: b.choose("wheel", [0, 0], propensity_samples=10**6),
        "propensity_samples",
        "limit of 1000",
    ),
    (
        lambda b: b.choose("wheel", [0, 0], explain_samples=10**6),
        "explain_samples",
        "limit of 1000",
    ),
    (lambda b: b.choose("items", FEATURES_8), "candidates", "at least one candidate"),
    (
        lambda b: b.choose("items", FEATURES_8, candidates=[item(0), Arm("b", [1.0])]),
        "candidates[1].features",
        "expected 8 values, got 1",
    ),
    (
        lambda b: b.choose("items", FEATURES_8, candidates=[Arm("", FEATURES_8)]),
        "candidates[0].id",
        "empty",
    ),
    (lambda b: b.reward("wheel", "some-id", NAN), "reward", "not finite"),
    (lambda b: b.reward("wheel", "some-id", 1e13), "reward", "max_abs_reward"),
    (lambda b: b.reward("wheel", "some-id", 1.0, regret=-1.0), "regret", "non-negative"),
    (lambda b: b.reward("wheel", "", 1.0), "decision_id", "empty"),
]


@pytest.mark.parametrize(
    "call,field,words", BAD_FIELDS, ids=[f"{i}:{f}" for i, (_, f, _) in enumerate(BAD_FIELDS)]
)
def test_bad_field_raises_with_its_path(server, retries, call, field, words) -> None:
    """INVALID_ARGUMENT arrives as InvalidArgument carrying the BadRequest field violation,
    and is never retried."""
    make, events = retries
    with make(server) as bandit:
        with pytest.raises(banditd.InvalidArgument) as raised:
            call(bandit)
    error = raised.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.field == field
    assert error.field_violations == (
        banditd.FieldViolation(field, error.field_violations[0].description),
    )
    assert words in error.field_violations[0].description
    assert error.message.startswith(f"{field}: ")
    assert error.attempts == 1 and events == []


def test_unknown_model_and_decision_are_not_found(server, retries) -> None:
    make, events = retries
    with make(server) as bandit:
        with pytest.raises(banditd.NotFound) as model:
            bandit.choose("nope", [0, 0])
        assert "nope" in model.value.message and model.value.field_violations == ()
        with pytest.raises(banditd.NotFound) as decision:
            bandit.reward("wheel", "never-made", 1.0)
        assert "never-made" in decision.value.message
    assert events == []


def test_candidates_of_the_wrong_type_are_refused_before_sending(server) -> None:
    with Client(server.target) as bandit:
        with pytest.raises(TypeError, match=r"candidates\[1\]"):
            bandit.choose("wheel", [0, 0], candidates=["0", 1])  # type: ignore[list-item]


def test_every_call_has_a_deadline(black_hole) -> None:
    """A server that never answers: the default deadline (1 s, retries included) ends the
    call with DeadlineExceeded, a per-call timeout overrides the client's, and neither is
    retried. (10 ms of slack for the timers' granularity.)"""
    with Client(black_hole) as bandit:
        started = time.monotonic()
        with pytest.raises(banditd.DeadlineExceeded) as raised:
            bandit.choose("wheel", [0, 0])
        assert time.monotonic() - started >= DEFAULT_TIMEOUT - 0.01
        assert DEFAULT_TIMEOUT == 1.0 and raised.value.attempts == 1
    with Client(black_hole, timeout=600) as bandit:
        started = time.monotonic()
        with pytest.raises(banditd.DeadlineExceeded) as raised:
            bandit.reward("wheel", "x", 1.0, timeout=0.2)
        assert 0.2 - 0.01 <= time.monotonic() - started < 600
        assert raised.value.attempts == 1
    with pytest.raises(ValueError, match="timeout"):
        Client(black_hole, timeout=0)


def test_models(server) -> None:
    """get_model and list_models return the configuration and counters."""
    with Client(server.target) as bandit:
        wheel = bandit.get_model("wheel")
        assert wheel.kind == "fixed_arms" and wheel.arm_ids == tuple(WHEEL_ARMS)
        assert wheel.context_dim == 2 and wheel.arm_feature_dim == 0
        assert wheel.hidden_layers == (16, 16) and wheel.policy == "mc_dropout"
        made = bandit.choose("wheel", [0, 0])
        bandit.reward("wheel", made.decision_id, 1.0)
        after = bandit.get_model("wheel")
        assert after.decisions == wheel.decisions + 1
        assert after.rewards == wheel.rewards + 1
        models = {m.name: m for m in bandit.list_models()}
        assert set(models) == {"wheel", "items"}
        assert models["items"].kind == "per_arm_features"
        assert models["items"].arm_feature_dim == 8 and models["items"].seed == 43
