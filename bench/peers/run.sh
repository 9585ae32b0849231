#!/usr/bin/env bash
# banditd next to Vowpal Wabbit and linear Thompson sampling on the same rounds.
#
#   bench/peers/run.sh                       # wheel 0.5, wheel 0.95, digits; T = 5000; seeds 1,2,3
#   ROUNDS=1000 SEEDS=1,2 bench/peers/run.sh --env wheel:0.5 --env per-arm
#
# Makes a virtual environment (VENV, default target/peers-venv) with vowpalwabbit 9.x,
# numpy and scikit-learn (for its bundled data sets) from PyPI, builds banditd-loadgen in
# release mode, and runs peers.py, which prints one table: environment x method ->
# normalized regret (uniform random = 100) mean ± std over the seeds. Extra arguments go to
# peers.py (e.g. --methods, --json FILE); --env arguments replace the default environments.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
ROUNDS="${ROUNDS:-5000}"
SEEDS="${SEEDS:-1,2,3}"
VENV="${VENV:-$repo/target/peers-venv}"
WORK="${WORK:-$repo/target/peers}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating the virtual environment $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'vowpalwabbit>=9,<10' numpy scikit-learn

cargo build --release --quiet --bin banditd-loadgen
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

envs=()
has_env=0
for arg in "$@"; do
    [[ "$arg" == "--env" ]] && has_env=1
done
if [[ $has_env -eq 0 ]]; then
    envs=(--env wheel:0.5 --env wheel:0.95 --env dataset:digits)
fi

exec "$VENV/bin/python" "$repo/bench/peers/peers.py" \
    --loadgen "$target_dir/release/banditd-loadgen" \
    --rounds "$ROUNDS" --seeds "$SEEDS" --work "$WORK" \
    "${envs[@]}" "$@"
