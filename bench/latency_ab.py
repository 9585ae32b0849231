#!/usr/bin/env python3
"""Latency of full rounds at an open-loop rate, for configuration variants side by side.

Each variant is the embedded default configuration with some `KEY = VALUE` lines replaced
(`--variant "nice0:learner_nice=0" --variant "nice10:learner_nice=10"`). For each repetition,
every variant in turn gets a fresh `banditd` (release build, fresh data directory) driven by
`banditd-loadgen grpc --rate R` (full rounds: ChooseArm then ReportReward; latency counted from
when a round was due, so queueing is not hidden); the variants alternate so that the machine's
drift hits them alike. Prints each run's ChooseArm and ReportReward p50/p99, the server's CPU
per round (all threads, the learners excluded, and the log writer's, read from /proc) and, per
variant, the medians over the repetitions (JSON on stdout).

    cargo build --release --bin banditd --bin banditd-loadgen
    python3 bench/latency_ab.py --rate 6000 --reps 4 \\
        --variant "nice0:learner_nice=0" --variant "nice10:learner_nice=10"
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from cpu_per_call import (ROOT, config_text, free_port, parse_variant, threads_cpu, wait_port,
                          wait_serving)


def run(rel, config_text, args):
    env = dict(os.environ, RAYON_NUM_THREADS="1", RUST_LOG="warn")
    data = tempfile.mkdtemp(prefix="banditd-lat-")
    config = os.path.join(data, "banditd.toml")
    with open(config, "w") as f:
        f.write(config_text)
    port, metrics = free_port(), free_port()
    server = subprocess.Popen(
        [os.path.join(rel, "banditd"), "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr",
         f"127.0.0.1:{metrics}", "--data-dir", os.path.join(data, "data")],
        env=dict(env, BANDITD_CONFIG=config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        wait_serving(metrics)
        before = threads_cpu(server.pid)
        out = subprocess.run(
            [os.path.join(rel, "banditd-loadgen"), "grpc", "--target", f"http://127.0.0.1:{port}",
             "--model", "wheel", "--env", "wheel:0.5", "--rate", str(args.rate), "--duration",
             args.duration, "--workers", str(args.workers), "--connections", str(args.connections),
             "--json"], env=env, check=True, capture_output=True, text=True).stdout
        report = json.loads(out)
        after = threads_cpu(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    lat = report["latency_us"]
    rounds = report["rounds"]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    learners = sum(v for k, v in delta.items() if k.startswith("learner-"))
    return {
        "server_cpu_us_per_round": sum(delta.values()) / rounds * 1e6,
        "server_cpu_us_per_round_without_learners": (sum(delta.values()) - learners) / rounds * 1e6,
        "log_writer_cpu_us_per_round": delta.get("log-writer", 0.0) / rounds * 1e6,
        "choose_arm_p50_ms": lat["choose_arm"]["p50"] / 1000,
        "choose_arm_p99_ms": lat["choose_arm"]["p99"] / 1000,
        "report_reward_p50_ms": lat["report_reward"]["p50"] / 1000,
        "report_reward_p99_ms": lat["report_reward"]["p99"] / 1000,
        "rounds_per_s": report["decisions_per_s"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True,
                    metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
                    help="a configuration variant (NAME: alone = the embedded default)")
    ap.add_argument("--rate", type=int, default=6000, help="rounds started per second")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--duration", default="15s")
    ap.add_argument("--workers", type=int, default=256, help="rounds in flight at most")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    args = ap.parse_args()
    rel = os.path.join(args.target_dir, "release")
    variants = []
    for spec in args.variant:
        name, overrides = parse_variant(spec)
        variants.append((name, config_text(os.path.join(rel, "banditd"), overrides)))
    results = {name: [] for name, _ in variants}
    for rep in range(args.reps):
        for name, text in variants:
            r = run(rel, text, args)
            results[name].append(r)
            print(f"rep {rep} {name}: ChooseArm p50/p99 {r['choose_arm_p50_ms']:.1f}/"
                  f"{r['choose_arm_p99_ms']:.1f} ms, ReportReward p50/p99 "
                  f"{r['report_reward_p50_ms']:.1f}/{r['report_reward_p99_ms']:.1f} ms, "
                  f"{r['rounds_per_s']:.0f} rounds/s, server CPU "
                  f"{r['server_cpu_us_per_round_without_learners']:.1f} µs per round without "
                  f"learners (log writer {r['log_writer_cpu_us_per_round']:.1f})", file=sys.stderr)
    summary = {
        "rate": args.rate,
        "load": f"{args.workers} in flight at most over {args.connections} connections, "
                f"{args.duration} per run",
        "median": {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                   for name, runs in results.items()},
        "all": results,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
