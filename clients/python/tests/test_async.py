"""The asyncio client against a real banditd: 100 concurrent decisions and rewards on one
client, and its errors."""

from __future__ import annotations

import asyncio

import pytest

import banditd
from banditd import Arm, AsyncClient

CALLS = 100


def items(i: int):
    return [Arm(f"item-{i}-{j}", [float(j == k) for k in range(8)]) for j in range(3)]


async def decide_and_reward(target: str):
    async with AsyncClient(target) as bandit:
        before = {m.name: m for m in await bandit.list_models()}
        choices = [
            bandit.choose("wheel", [i / CALLS, -i / CALLS])
            if i % 2 == 0
            else bandit.choose("items", [i / CALLS] * 8, candidates=items(i))
            for i in range(CALLS)
        ]
        decisions = await asyncio.gather(*choices)
        models = ["wheel" if i % 2 == 0 else "items" for i in range(CALLS)]
        rewards = await asyncio.gather(
            *(
                bandit.reward(model, d.decision_id, float(i % 3))
                for i, (model, d) in enumerate(zip(models, decisions))
            )
        )
        after = {m.name: m for m in await bandit.list_models()}
    return models, decisions, rewards, before, after


def test_async_client_under_100_concurrent_calls(server) -> None:
    models, decisions, rewards, before, after = asyncio.run(decide_and_reward(server.target))
    assert len({d.decision_id for d in decisions}) == CALLS
    for i, (model, d) in enumerate(zip(models, decisions)):
        if model == "wheel":
            assert len(d.scores) == 5
        else:
            assert [s.arm_id for s in d.scores] == [a.id for a in items(i)]
        assert d.arm_id == max(d.scores, key=lambda s: s.score).arm_id
    assert all(not r.duplicate for r in rewards)
    for name in ("wheel", "items"):
        assert after[name].decisions - before[name].decisions == CALLS // 2
        assert after[name].rewards - before[name].rewards == CALLS // 2


async def errors(target: str):
    async with AsyncClient(target) as bandit:
        with pytest.raises(banditd.InvalidArgument) as bad:
            await bandit.choose("items", [0.0] * 8, candidates=[Arm("a", [1.0, 2.0])])
        with pytest.raises(banditd.NotFound):
            await bandit.get_model("nope")
        same = await bandit.choose("wheel", [0, 0], decision_id="async-retry")
        assert await bandit.choose("wheel", [0, 0], decision_id="async-retry") == same
        with pytest.raises(banditd.FailedPrecondition):
            await bandit.choose("wheel", [1, 1], decision_id="async-retry")
        assert not (await bandit.reward("wheel", "async-retry", 2.0)).duplicate
        assert (await bandit.reward("wheel", "async-retry", 2.0)).duplicate
    return bad.value


def test_async_errors_and_idempotent_retry(server) -> None:
    bad = asyncio.run(errors(server.target))
    assert bad.field == "candidates[0].features"
    assert "expected 8 values, got 2" in bad.field_violations[0].description


async def never_answered(target: str) -> banditd.BanditError:
    async with AsyncClient(target, timeout=0.2) as bandit:
        with pytest.raises(banditd.DeadlineExceeded) as raised:
            await bandit.choose("wheel", [0, 0])
    return raised.value


def test_async_deadline(black_hole) -> None:
    """The async client's calls end at their deadline too."""
    assert asyncio.run(never_answered(black_hole)).attempts == 1
