#!/usr/bin/env python3
"""banditd next to the peers users would pick instead, on exactly the same rounds.

For every environment and seed, `banditd-loadgen dump` writes the rounds (context, candidates,
expected and sampled rewards) as JSON lines; Vowpal Wabbit (`--cb_explore_adf` with
`--squarecb`, `--epsilon 0.05` and `--bag 5`) and a linear Thompson sampling baseline play
those rounds here, and `banditd-loadgen inproc` plays the same environments and seeds with
banditd's default policy and learner. Each method's regret is measured on the expected
rewards of the rounds and normalized to uniform random = 100 (oracle = 0), and one table
prints environment x method -> normalized regret mean +- std over the seeds.

Environments are loadgen specs (`wheel:0.5`, `per-arm`, `csv:PATH[:LABEL]`, ...) or
`dataset:NAME` for a scikit-learn bundled data set (iris, wine, breast_cancer, digits), which
is written out as CSV with a header row and the label last, and played as `csv:PATH`.

Run through bench/peers/run.sh, which makes the virtual environment and builds the tool.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

try:
    import vowpalwabbit
except ImportError:  # pragma: no cover - run.sh installs it
    sys.exit("vowpalwabbit is not installed: run bench/peers/run.sh (it makes a venv)")

VW_CONFIGS = {
    # Every config learns a per-action linear model via quadratic shared x action features.
    "vw-squarecb": "--cb_explore_adf --squarecb -q sa",
    "vw-epsilon": "--cb_explore_adf --epsilon 0.05 -q sa",
    "vw-bag5": "--cb_explore_adf --bag 5 -q sa",
}


# ---------------------------------------------------------------------------------------
# Rounds


@dataclass
class Rounds:
    """The rounds of one environment and seed, as dumped by `banditd-loadgen dump`."""

    header: dict
    contexts: list = field(default_factory=list)  # per round: np.ndarray (context_dim,)
    ids: list = field(default_factory=list)  # per round: list of candidate ids
    features: list = field(default_factory=list)  # per round: np.ndarray (n, arm_dim)
    expected: list = field(default_factory=list)  # per round: np.ndarray (n,)
    rewards: list = field(default_factory=list)  # per round: np.ndarray (n,)

    @property
    def fixed(self) -> bool:
        return self.header["arm_feature_dim"] == 0


def load_rounds(path: str) -> Rounds:
    with open(path, encoding="utf-8") as f:
        rounds = Rounds(header=json.loads(f.readline()))
        for line in f:
            r = json.loads(line)
            rounds.contexts.append(np.asarray(r["context"], dtype=np.float64))
            rounds.ids.append([c["id"] for c in r["candidates"]])
            rounds.features.append(
                np.asarray([c["features"] for c in r["candidates"]], dtype=np.float64)
            )
            rounds.expected.append(np.asarray(r["expected"], dtype=np.float64))
            rounds.rewards.append(np.asarray(r["rewards"], dtype=np.float64))
    return rounds


@dataclass
class Score:
    regret: float = 0.0
    uniform: float = 0.0
    reward: float = 0.0
    n: int = 0

    def add(self, expected: np.ndarray, chosen: int, reward: float) -> None:
        best = float(expected.max())
        self.regret += best - float(expected[chosen])
        self.uniform += float(np.mean(best - expected))
        self.reward += reward
        self.n += 1

    @property
    def normalized(self) -> float:
        return 100.0 * self.regret / self.uniform if self.uniform > 0 else math.nan


# ---------------------------------------------------------------------------------------
# Vowpal Wabbit


def vw_features(prefix: str, values: np.ndarray) -> str:
    return " ".join(f"{prefix}{i}:{v:.6g}" for i, v in enumerate(values) if v != 0.0)


def run_vw(rounds: Rounds, args: str, seed: int) -> Score:
    vw = vowpalwabbit.Workspace(f"{args} --quiet --random_seed {seed}")
    rng = np.random.default_rng(seed)
    score = Score()
    try:
        for t, context in enumerate(rounds.contexts):
            shared = f"shared |s {vw_features('x', context)}"
            if rounds.fixed:
                actions = [f"|a arm_{i}" for i in rounds.ids[t]]
            else:
                actions = [f"|a {vw_features('z', z)}" for z in rounds.features[t]]
            pmf = np.asarray(vw.predict([shared, *actions]), dtype=np.float64)
            pmf = pmf / pmf.sum()
            chosen = int(rng.choice(len(pmf), p=pmf))
            reward = float(rounds.rewards[t][chosen])
            score.add(rounds.expected[t], chosen, reward)
            # VW minimizes cost: cost = -reward, with the probability it was chosen with.
            labelled = list(actions)
            labelled[chosen] = f"0:{-reward:.6g}:{pmf[chosen]:.6g} {actions[chosen]}"
            vw.learn([shared, *labelled])
    finally:
        vw.finish()
    return score


# ---------------------------------------------------------------------------------------
# Linear Thompson sampling


class BayesLinear:
    """Bayesian linear regression with a Normal-inverse-gamma prior (unknown noise
    variance), as LinFullPosterior in Riquelme, Tucker & Snoek (2018): beta ~ N(0, s^2/lambda),
    s^2 ~ IG(a0, b0). Each decision samples s^2 then beta from the posterior."""

    def __init__(self, dim: int, lam: float = 0.25, a0: float = 6.0, b0: float = 6.0):
        self.precision = lam * np.eye(dim)
        self.xty = np.zeros(dim)
        self.yty = 0.0
        self.n = 0
        self.a0, self.b0 = a0, b0
        self._refresh()

    def _refresh(self) -> None:
        cov = np.linalg.inv(self.precision)
        cov = (cov + cov.T) / 2
        self.mean = cov @ self.xty
        self.chol = np.linalg.cholesky(cov + 1e-10 * np.eye(len(cov)))
        self.a = self.a0 + self.n / 2
        self.b = self.b0 + 0.5 * max(self.yty - self.mean @ self.precision @ self.mean, 0.0)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        sigma2 = self.b / rng.gamma(self.a)
        return self.mean + math.sqrt(sigma2) * (self.chol @ rng.standard_normal(len(self.mean)))

    def update(self, x: np.ndarray, y: float) -> None:
        self.precision += np.outer(x, x)
        self.xty += y * x
        self.yty += y * y
        self.n += 1
        self._refresh()


def run_lints(rounds: Rounds, seed: int) -> Score:
    """Fixed arms: one Bayesian linear regression per arm on [context, 1]. Per-arm: one on
    [vec(context x features), features, 1] (the bilinear model VW's `-q sa` also fits)."""
    rng = np.random.default_rng(seed)
    score = Score()
    if rounds.fixed:
        arm_ids = rounds.header["arm_ids"]
        dim = rounds.header["context_dim"] + 1
        models = {a: BayesLinear(dim) for a in arm_ids}
        for t, context in enumerate(rounds.contexts):
            x = np.append(context, 1.0)
            values = [x @ models[a].sample(rng) for a in rounds.ids[t]]
            chosen = int(np.argmax(values))
            reward = float(rounds.rewards[t][chosen])
            score.add(rounds.expected[t], chosen, reward)
            models[rounds.ids[t][chosen]].update(x, reward)
    else:
        c, d = rounds.header["context_dim"], rounds.header["arm_feature_dim"]
        model = BayesLinear(c * d + d + 1)
        for t, context in enumerate(rounds.contexts):
            zs = rounds.features[t]
            xs = np.hstack(
                [np.einsum("i,nj->nij", context, zs).reshape(len(zs), -1), zs, np.ones((len(zs), 1))]
            )
            chosen = int(np.argmax(xs @ model.sample(rng)))
            reward = float(rounds.rewards[t][chosen])
            score.add(rounds.expected[t], chosen, reward)
            model.update(xs[chosen], reward)
    return score


# ---------------------------------------------------------------------------------------
# Orchestration


def write_dataset(name: str, work: str) -> str:
    """A scikit-learn bundled data set as CSV (header row, numeric features, label last)."""
    from sklearn import datasets

    loaders = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        sys.exit(f"unknown data set {name!r}; choose one of {', '.join(loaders)}")
    data = loaders[name]()
    path = os.path.join(work, f"{name}.csv")
    columns = [re.sub(r"[^A-Za-z0-9_]+", "_", str(c)) for c in getattr(data, "feature_names", [])]
    if len(columns) != data.data.shape[1]:
        columns = [f"f{i}" for i in range(data.data.shape[1])]
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join([*columns, "label"]) + "\n")
        for row, label in zip(data.data, data.target):
            f.write(",".join(f"{v:.6g}" for v in row) + f",{int(label)}\n")
    return path


def resolve(spec: str, work: str) -> tuple[str, str]:
    """(display name, loadgen spec)."""
    if spec.startswith("dataset:"):
        name = spec.split(":", 1)[1]
        return name, f"csv:{write_dataset(name, work)}"
    return spec, spec


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loadgen", required=True, help="path of the banditd-loadgen binary")
    parser.add_argument("--env", action="append", required=True, help="environment (repeat)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--work", default="target/peers", help="scratch directory")
    parser.add_argument(
        "--methods",
        default="banditd,vw-squarecb,vw-epsilon,vw-bag5,lints",
        help="comma-separated subset of banditd, vw-squarecb, vw-epsilon, vw-bag5, lints",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    os.makedirs(args.work, exist_ok=True)
    envs = [resolve(spec, args.work) for spec in args.env]
    # results[env][method] = list of per-seed normalized regrets; timings likewise.
    results: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, float]] = {}

    for name, spec in envs:
        results[name] = {m: [] for m in methods}
        seconds[name] = {m: 0.0 for m in methods}
        if "banditd" in methods:
            started = time.perf_counter()
            out = subprocess.run(
                [args.loadgen, "inproc", "--env", spec, "--seeds", ",".join(map(str, seeds)),
                 "--rounds", str(args.rounds), "--json", "--quiet"],
                check=True, capture_output=True, text=True,
            )
            report = json.loads(out.stdout)
            results[name]["banditd"] = [run["normalized_regret"] for run in report["runs"]]
            seconds[name]["banditd"] = time.perf_counter() - started
            print(f"{name}: banditd {results[name]['banditd']}", file=sys.stderr)
        for seed in seeds:
            path = os.path.join(args.work, f"{safe(name)}-seed{seed}-T{args.rounds}.jsonl")
            subprocess.run(
                [args.loadgen, "dump", "--env", spec, "--seed", str(seed),
                 "--rounds", str(args.rounds), "-o", path],
                check=True,
            )
            rounds = load_rounds(path)
            for method in methods:
                if method == "banditd":
                    continue
                started = time.perf_counter()
                if method == "lints":
                    score = run_lints(rounds, seed)
                elif method in VW_CONFIGS:
                    score = run_vw(rounds, VW_CONFIGS[method], seed)
                else:
                    sys.exit(f"unknown method {method!r}")
                seconds[name][method] += time.perf_counter() - started
                results[name][method].append(score.normalized)
                print(f"{name} seed {seed}: {method} {score.normalized:.2f}", file=sys.stderr)

    print()
    print(f"Normalized regret (uniform random = 100, oracle = 0), T = {args.rounds}, "
          f"seeds {','.join(map(str, seeds))}: mean ± std")
    print()
    print("| environment | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for name, _ in envs:
        cells = []
        for m in methods:
            mean, std = mean_std(results[name][m])
            cells.append(f"{mean:.2f} ± {std:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("Seconds per environment (all seeds): " + "; ".join(
        f"{name}: " + ", ".join(f"{m} {seconds[name][m]:.1f}" for m in methods)
        for name, _ in envs))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rounds": args.rounds, "seeds": seeds, "vw_version": vowpalwabbit.__version__,
                       "vw_args": VW_CONFIGS, "results": results, "seconds": seconds}, f, indent=2)


if __name__ == "__main__":
    main()
