#!/usr/bin/env python3
"""Agreement of `banditd evaluate` with the Open Bandit Pipeline (obp) on the Open Bandit
Dataset sample that obp ships (10,000 rows per behaviour policy, campaign "all").

Not run in CI: obp pulls torch, scikit-learn, pandas and more. Setup (obp 0.5.7 needs
Python < 3.11):

    python3.10 -m venv /work/venvs/obp
    /work/venvs/obp/bin/pip install obp==0.5.7 "matplotlib<3.9"   # seaborn 0.11 needs < 3.9
    cargo build --bin banditd
    /work/venvs/obp/bin/python bench/obp_agreement.py target/debug/banditd

For each behaviour policy (random, bts) obp computes IPS, SNIPS and DR for one evaluation
policy, Bernoulli Thompson sampling with the ZOZOTOWN prior (obp's own example), with a
logistic-regression reward model (3-fold cross-fitted). banditd reads the same rows (written
back as the Open Bandit CSV in the order obp uses, sorted by timestamp), the same
evaluation policy's probabilities (`--candidate probabilities:FILE`, each row's
distribution at its position) and the same reward-model predictions
(`--reward-predictions FILE`). The script prints both and the largest relative difference,
and exits non-zero if any exceeds 1e-9.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from obp.dataset import OpenBanditDataset
from obp.ope import (
    DoublyRobust,
    InverseProbabilityWeighting,
    OffPolicyEvaluation,
    RegressionModel,
    SelfNormalizedInverseProbabilityWeighting,
)
from obp.policy import BernoulliTS
from sklearn.linear_model import LogisticRegression

TOLERANCE = 1e-9


def write_rows(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps([float(x) for x in row]) + "\n")


def compare(banditd, behavior, work):
    dataset = OpenBanditDataset(behavior_policy=behavior, campaign="all")
    feedback = dataset.obtain_batch_bandit_feedback()
    n = feedback["n_rounds"]
    policy = BernoulliTS(
        n_actions=dataset.n_actions,
        len_list=dataset.len_list,
        is_zozotown_prior=True,
        campaign="all",
        random_state=12345,
    )
    action_dist = policy.compute_batch_action_dist(n_sim=10_000, n_rounds=n)
    regression = RegressionModel(
        n_actions=dataset.n_actions,
        len_list=dataset.len_list,
        action_context=dataset.action_context,
        base_model=LogisticRegression(max_iter=1000, random_state=12345),
    )
    predicted = regression.fit_predict(
        context=feedback["context"],
        action=feedback["action"],
        reward=feedback["reward"],
        position=feedback["position"],
        pscore=feedback["pscore"],
        n_folds=3,
        random_state=12345,
    )
    ope = OffPolicyEvaluation(
        bandit_feedback=feedback,
        ope_estimators=[
            InverseProbabilityWeighting(),
            SelfNormalizedInverseProbabilityWeighting(),
            DoublyRobust(),
        ],
    )
    theirs = ope.estimate_policy_values(
        action_dist=action_dist, estimated_rewards_by_reg_model=predicted
    )

    rows = np.arange(n)
    position = feedback["position"]
    csv = work / f"{behavior}.csv"
    dataset.data.to_csv(csv)
    write_rows(work / f"{behavior}-pi.jsonl", action_dist[rows, :, position])
    write_rows(work / f"{behavior}-q.jsonl", predicted[rows, :, position])
    started = time.perf_counter()
    out = subprocess.run(
        [
            banditd,
            "evaluate",
            "--from",
            str(csv),
            "--items",
            str(dataset.n_actions),
            "--candidate",
            f"probabilities:{work / f'{behavior}-pi.jsonl'}",
            "--reward-predictions",
            str(work / f"{behavior}-q.jsonl"),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    report = json.loads(out.stdout)
    ours = report["policies"][0]["estimates"]
    worst = 0.0
    print(f"behaviour policy {behavior}: {n} rows, banditd evaluate took {elapsed:.2f} s")
    print(f"  logged mean click: obp {feedback['reward'].mean():.12g}, banditd {report['logged']['value']:.12g}")
    for name, key in [("ipw", "ips"), ("snipw", "snips"), ("dr", "dr")]:
        a, b = theirs[name], ours[key]["value"]
        rel = abs(a - b) / max(abs(a), 1e-300)
        worst = max(worst, rel)
        print(f"  {key:>5}: obp {a:.15g}  banditd {b:.15g}  relative difference {rel:.2e}")
    print(f"  banditd's effective sample size {ours['effective_sample_size']:.1f} of {n}")
    return worst


def main():
    banditd = sys.argv[1] if len(sys.argv) > 1 else "target/debug/banditd"
    with tempfile.TemporaryDirectory() as tmp:
        worst = max(compare(banditd, b, Path(tmp)) for b in ["random", "bts"])
    print(f"largest relative difference: {worst:.2e} (tolerance {TOLERANCE:g})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
