"""The values the client takes and returns: plain frozen dataclasses, no protobuf types."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union


@dataclass(frozen=True)
class Arm:
    """A candidate arm. Fixed-arm models take ids only (``features`` empty); per-arm-feature
    models need exactly the model's ``arm_feature_dim`` feature values per arm."""

    id: str
    features: Sequence[float] = ()


#: What ``choose(candidates=...)`` accepts per candidate: an arm id (fixed-arm models), an
#: :class:`Arm`, or an ``(id, features)`` pair.
CandidateLike = Union[str, Arm, Tuple[str, Sequence[float]]]


@dataclass(frozen=True)
class ArmScore:
    """One scored candidate of a decision."""

    arm_id: str
    #: Expected reward under the posterior sample that decided (Thompson policies), or under
    #: the network's mean (greedy, epsilon_greedy, uniform).
    score: float
    #: With ``explain_samples``: the posterior mean and standard deviation of this arm's
    #: expected reward over that many samples; ``None`` otherwise.
    posterior_mean: Optional[float] = None
    posterior_std: Optional[float] = None


@dataclass(frozen=True)
class Decision:
    """The answer of ``choose``: show ``arm_id``, later report its reward by ``decision_id``."""

    decision_id: str
    arm_id: str
    #: Every scored candidate, in request order (configured order when none were named).
    scores: Tuple[ArmScore, ...]
    #: The version of the weights that decided.
    model_version: int
    #: The probability that the policy picks ``arm_id`` for this request: always set for the
    #: baselines, set for Thompson policies only when ``propensity_samples`` asked for it.
    propensity: Optional[float] = None


@dataclass(frozen=True)
class RewardResult:
    """The answer of ``reward``."""

    #: True when the server already had this reward for the decision (a retry).
    duplicate: bool


@dataclass(frozen=True)
class ModelInfo:
    """One model's configuration and counters (``get_model``, ``list_models``)."""

    name: str
    #: ``"fixed_arms"`` or ``"per_arm_features"``.
    kind: str
    policy: str
    context_dim: int
    arm_feature_dim: int
    arm_ids: Tuple[str, ...]
    hidden_layers: Tuple[int, ...]
    drop_rates: Tuple[float, ...]
    learning_rate: float
    batch_size: int
    updates_per_reward: int
    replay_capacity: int
    prior_strength: float
    reward_window_seconds: float
    default_reward: Optional[float]
    seed: int
    epsilon: float
    propensity_samples: int
    model_version: int
    decisions: int
    rewards: int
    training_steps: int
    pending_decisions: int


@dataclass(frozen=True)
class Tls:
    """TLS settings. ``Tls()`` trusts the system's roots; give ``root_certificates`` (PEM) to
    trust a private CA, and ``certificate_chain`` with ``private_key`` (PEM) for mutual TLS."""

    root_certificates: Optional[bytes] = None
    certificate_chain: Optional[bytes] = None
    private_key: Optional[bytes] = None
    #: The name to check the server's certificate against, when it differs from the host
    #: in the target (for example when connecting by IP address).
    server_name: Optional[str] = None

    @classmethod
    def from_files(
        cls,
        ca: Optional[Union[str, Path]] = None,
        cert: Optional[Union[str, Path]] = None,
        key: Optional[Union[str, Path]] = None,
        server_name: Optional[str] = None,
    ) -> Tls:
        """Reads the PEM files given (each optional, as in the constructor)."""

        def read(path: Optional[Union[str, Path]]) -> Optional[bytes]:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key), server_name)
