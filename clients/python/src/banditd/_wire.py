"""Between the client's dataclasses and the generated protobuf messages, and the channel
settings both clients share. Nothing here sends anything."""

from __future__ import annotations

import uuid
from typing import Iterable, List, Optional, Sequence, Tuple

import grpc

from .types import Arm, ArmScore, CandidateLike, Decision, ModelInfo, RewardResult, Tls
from .v1 import bandit_pb2 as pb

USER_AGENT = "banditd-python/0.1.0"

Metadata = Tuple[Tuple[str, str], ...]


def metadata(token: Optional[str]) -> Metadata:
    """The call metadata: the bearer token, if any."""
    if token is None:
        return ()
    if not token or token != token.strip():
        raise ValueError("token: must be non-empty, without surrounding whitespace")
    return (("authorization", f"Bearer {token}"),)


def channel_options(tls: Optional[Tls], options: Sequence[Tuple[str, object]]) -> List:
    """gRPC channel options: the user agent, a TLS server-name override, then the caller's."""
    opts: List[Tuple[str, object]] = [("grpc.primary_user_agent", USER_AGENT)]
    if tls is not None and tls.server_name is not None:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    opts.extend(options)
    return opts


def credentials(tls: Tls) -> grpc.ChannelCredentials:
    if (tls.certificate_chain is None) != (tls.private_key is None):
        raise ValueError("tls: certificate_chain and private_key go together (mutual TLS)")
    return grpc.ssl_channel_credentials(
        root_certificates=tls.root_certificates,
        private_key=tls.private_key,
        certificate_chain=tls.certificate_chain,
    )


def _arm(i: int, candidate: CandidateLike) -> pb.Arm:
    if isinstance(candidate, str):
        return pb.Arm(id=candidate)
    if isinstance(candidate, Arm):
        return pb.Arm(id=candidate.id, features=[float(v) for v in candidate.features])
    if isinstance(candidate, tuple) and len(candidate) == 2 and isinstance(candidate[0], str):
        return pb.Arm(id=candidate[0], features=[float(v) for v in candidate[1]])
    raise TypeError(
        f"candidates[{i}]: expected an arm id, an Arm or an (id, features) pair, "
        f"got {type(candidate).__name__}"
    )


def choose_request(
    model: str,
    context: Iterable[float],
    candidates: Optional[Iterable[CandidateLike]],
    excluded: Optional[Iterable[str]],
    decision_id: Optional[str],
    propensity_samples: int,
    explain_samples: int,
) -> pb.ChooseArmRequest:
    """The request, with a client-made decision id when the caller gave none: with an id,
    a retry returns the decision already made instead of drawing a second one."""
    return pb.ChooseArmRequest(
        model=model,
        context=[float(v) for v in context],
        candidates=[_arm(i, c) for i, c in enumerate(candidates or ())],
        excluded_arm_ids=list(excluded or ()),
        decision_id=decision_id or str(uuid.uuid4()),
        propensity_samples=propensity_samples,
        explain_samples=explain_samples,
    )


def reward_request(
    model: str, decision_id: str, reward: float, regret: Optional[float]
) -> pb.ReportRewardRequest:
    request = pb.ReportRewardRequest(model=model, decision_id=decision_id, reward=float(reward))
    if regret is not None:
        request.regret = float(regret)
    return request


def _optional(message, field: str) -> Optional[float]:
    return getattr(message, field) if message.HasField(field) else None


def decision(response: pb.ChooseArmResponse) -> Decision:
    return Decision(
        decision_id=response.decision_id,
        arm_id=response.arm_id,
        scores=tuple(
            ArmScore(
                arm_id=s.arm_id,
                score=s.score,
                posterior_mean=_optional(s, "posterior_mean"),
                posterior_std=_optional(s, "posterior_std"),
            )
            for s in response.scores
        ),
        model_version=response.model_version,
        propensity=_optional(response, "propensity"),
    )


def reward_result(response: pb.ReportRewardResponse) -> RewardResult:
    return RewardResult(duplicate=response.duplicate)


_KINDS = {
    pb.MODEL_KIND_FIXED_ARMS: "fixed_arms",
    pb.MODEL_KIND_PER_ARM_FEATURES: "per_arm_features",
}


def model_info(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        name=m.name,
        kind=_KINDS.get(m.kind, "unspecified"),
        policy=m.policy,
        context_dim=m.context_dim,
        arm_feature_dim=m.arm_feature_dim,
        arm_ids=tuple(m.arm_ids),
        hidden_layers=tuple(m.hidden_layers),
        drop_rates=tuple(m.drop_rates),
        learning_rate=m.learning_rate,
        batch_size=m.batch_size,
        updates_per_reward=m.updates_per_reward,
        replay_capacity=m.replay_capacity,
        prior_strength=m.prior_strength,
        reward_window_seconds=m.reward_window_seconds,
        default_reward=_optional(m, "default_reward"),
        seed=m.seed,
        epsilon=m.epsilon,
        propensity_samples=m.propensity_samples,
        model_version=m.model_version,
        decisions=m.decisions,
        rewards=m.rewards,
        training_steps=m.training_steps,
        pending_decisions=m.pending_decisions,
    )
