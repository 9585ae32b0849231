#!/usr/bin/env python3
"""Server CPU per call: banditd beside the no-op tonic server, under the same load, in one run.

Starts `examples/noop_server` and `banditd` (embedded default configuration, a fresh data
directory, fsync durability unless --periodic), then for each repetition drives each server in
turn with the same `banditd-loadgen grpc` closed loop and reads the server's CPU time from
/proc (utime + stime of every thread, and per thread name) before and after. Reports, per
server, the median CPU microseconds per decision over the repetitions and banditd's ratio to
the no-op server; for banditd also without its learner threads and the log writer's share.

    cargo build --release --bin banditd --bin banditd-loadgen --example noop_server
    python3 bench/cpu_per_call.py --mode decisions --reps 5
    python3 bench/cpu_per_call.py --mode rounds --reps 4

`--mode decisions` sends ChooseArm only (rewards never reported); `--mode rounds` sends
ChooseArm then ReportReward (the CPU is per round: one decision and one reward).

`--variant NAME:KEY=VALUE,...` (repeatable) runs one banditd per variant, each with those
configuration lines replaced on top of `--set`, and drives the no-op server and every variant
in turn in each repetition (the variants' order rotating), so that configurations compare in
one run. Without `--variant` there is one, named `banditd`. For example, the floor that the
service's bookkeeping sets (a policy that runs no model draw) beside the default:

    python3 bench/cpu_per_call.py --reps 5 --variant default: \
        --variant greedy:policy='"greedy"' --variant uniform:policy='"uniform"'
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_cpu(pid):
    """CPU seconds per thread name, summed over threads of the same name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / TICK
        out[name] = out.get(name, 0.0) + seconds
    return out


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")


def wait_serving(metrics_port, timeout=120):
    # banditd answers health NOT_SERVING while it recovers; the loadgen waits for it too.
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)


def drive(loadgen, port, args):
    cmd = [
        loadgen, "grpc", "--target", f"http://127.0.0.1:{port}", "--model", "wheel",
        "--env", "wheel:0.5", "--duration", args.duration, "--workers", str(args.workers),
        "--connections", str(args.connections), "--json",
    ]
    if args.mode == "decisions":
        cmd += ["--missing-rewards", "1.0"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    return report


def decisions_of(report):
    for key in ("decisions", "rounds", "requests"):
        if key in report:
            return report[key]
    runs = report.get("runs") or []
    if runs:
        return decisions_of(runs[0])
    sys.exit(f"no decision count in the loadgen report: {list(report)}")


def config_text(banditd, overrides, periodic=False):
    """The embedded default configuration with every `KEY = ...` line of `overrides` replaced."""
    text = subprocess.run([banditd, "--print-default-config"],
                          capture_output=True, text=True, check=True).stdout
    if periodic:
        text = text.replace('durability = "fsync"', 'durability = "periodic"')
    lines = text.splitlines()
    for key, value in overrides.items():
        if not any(line.startswith(f"{key} = ") for line in lines):
            sys.exit(f"the default configuration has no `{key} = ` line to replace")
        lines = [f"{key} = {value}" if line.startswith(f"{key} = ") else line for line in lines]
    return "\n".join(lines) + "\n"


def configure(rel, data, args, overrides):
    """The banditd configuration file for these `KEY = VALUE` overrides, or None for the default."""
    if not (args.periodic or overrides):
        return None
    config = os.path.join(data, "banditd.toml")
    with open(config, "w") as f:
        f.write(config_text(os.path.join(rel, "banditd"), overrides, args.periodic))
    return config


def parse_variant(text):
    name, _, spec = text.partition(":")
    if not name:
        sys.exit(f"--variant {text!r}: expected NAME:KEY=VALUE,... (the list may be empty)")
    pairs = [kv for kv in spec.split(",") if kv]
    if any("=" not in kv for kv in pairs):
        sys.exit(f"--variant {text!r}: each setting is KEY=VALUE")
    return name, dict(kv.split("=", 1) for kv in pairs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["decisions", "rounds"], default="decisions")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--periodic", action="store_true", help="periodic durability instead of fsync")
    ap.add_argument("--learner-nice", type=int, default=None,
                    help="every model's learner_nice (default: the configuration's, 10)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="replace every `KEY = ...` line of the default configuration (repeatable)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="one banditd per variant, its lines replaced on top of --set (repeatable)")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    args = ap.parse_args()
    rel = os.path.join(args.target_dir, "release")
    loadgen = os.path.join(rel, "banditd-loadgen")
    env = dict(os.environ, RAYON_NUM_THREADS="1", RUST_LOG="warn")
    noop_port = free_port()
    noop = subprocess.Popen([os.path.join(rel, "examples", "noop_server"), "--addr", f"127.0.0.1:{noop_port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    common = dict(kv.split("=", 1) for kv in args.set)
    if args.learner_nice is not None:
        common["learner_nice"] = str(args.learner_nice)
    variants = [parse_variant(v) for v in args.variant] or [("banditd", {})]
    if len({name for name, _ in variants}) != len(variants) or any(n == "noop" for n, _ in variants):
        sys.exit("variant names must be distinct and not `noop`")
    servers = {}  # name -> (process, grpc port, overrides)
    try:
        for name, own in variants:
            overrides = {**common, **own}
            data = tempfile.mkdtemp(prefix=f"banditd-cpu-{name}-")
            port, metrics = free_port(), free_port()
            server_env = dict(env)
            config = configure(rel, data, args, overrides)
            if config:
                server_env["BANDITD_CONFIG"] = config
            proc = subprocess.Popen(
                [os.path.join(rel, "banditd"), "--grpc-addr", f"127.0.0.1:{port}",
                 "--metrics-addr", f"127.0.0.1:{metrics}", "--data-dir", os.path.join(data, "data")],
                env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers[name] = (proc, port, overrides)
            wait_port(port)
            wait_serving(metrics)
        wait_port(noop_port)
        names = [name for name, _ in variants]
        results = {"noop": []}
        rates = {"noop": []}
        for name in names:
            results.update({name: [], f"{name}_no_learner": [], f"{name}_log_writer": []})
            rates[name] = []
        paired = {name: [] for name in names}  # per-rep ratio to the no-op run just before
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            runs = [("noop", noop, noop_port)] + [(n, servers[n][0], servers[n][1]) for n in order]
            for name, proc, p in runs:
                before = threads_cpu(proc.pid)
                t0 = time.time()
                report = drive(loadgen, p, args)
                elapsed = time.time() - t0
                after = threads_cpu(proc.pid)
                n = decisions_of(report)
                delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                total = sum(delta.values())
                results[name].append(total / n * 1e6)
                rates[name].append(n / elapsed)
                if name != "noop":
                    learners = sum(v for k, v in delta.items() if k.startswith("learner-"))
                    results[f"{name}_no_learner"].append((total - learners) / n * 1e6)
                    results[f"{name}_log_writer"].append(delta.get("log-writer", 0.0) / n * 1e6)
                    paired[name].append(results[name][-1] / results["noop"][-1])
                    threads = ", ".join(f"{k} {v / n * 1e6:.1f}" for k, v in sorted(delta.items()) if v > 0)
                    print(f"rep {rep}: {name} µs/decision by thread: {threads}", file=sys.stderr)
            line = ", ".join(
                f"{name} {results[name][-1]:.1f} µs ({results[f'{name}_no_learner'][-1]:.1f} without learners, "
                f"log writer {results[f'{name}_log_writer'][-1]:.2f}; {rates[name][-1]:.0f}/s)" for name in names)
            print(f"rep {rep}: noop {results['noop'][-1]:.1f} µs ({rates['noop'][-1]:.0f}/s), {line}", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in results.items()}
        noop_rate = statistics.median(rates["noop"])

        def summary_of(name):
            return {
                "overrides": servers[name][2],
                "median_cpu_us_per_decision": med[name],
                "median_cpu_us_per_decision_without_learners": med[f"{name}_no_learner"],
                "median_log_writer_us_per_decision": med[f"{name}_log_writer"],
                "ratio_to_noop": med[name] / med["noop"],
                "ratio_to_noop_without_learners": med[f"{name}_no_learner"] / med["noop"],
                "median_paired_ratio": statistics.median(paired[name]),
                "median_decisions_per_s": statistics.median(rates[name]),
                "throughput_ratio": statistics.median(rates[name]) / noop_rate,
            }

        summary = {
            "mode": args.mode,
            "durability": "periodic" if args.periodic else "fsync",
            "reps": args.reps,
            "load": f"{args.workers} workers over {args.connections} connections, {args.duration} per server per rep",
            "noop_median_cpu_us_per_decision": med["noop"],
            "noop_median_decisions_per_s": noop_rate,
            "variants": {name: summary_of(name) for name in names},
            "all": results,
        }
        if len(names) == 1:
            # The single-server keys earlier runs (and BENCHMARKS.md's commands) report.
            only = summary["variants"][names[0]]
            summary.update({
                "overrides": only["overrides"],
                "median_cpu_us_per_decision": {
                    "noop": med["noop"], "banditd": only["median_cpu_us_per_decision"],
                    "banditd_no_learner": only["median_cpu_us_per_decision_without_learners"],
                    "log_writer": only["median_log_writer_us_per_decision"]},
                "ratio_to_noop": only["ratio_to_noop"],
                "ratio_to_noop_without_learners": only["ratio_to_noop_without_learners"],
                "median_decisions_per_s": {"noop": noop_rate, "banditd": only["median_decisions_per_s"]},
                "throughput_ratio": only["throughput_ratio"],
            })
        print(json.dumps(summary, indent=2))
    finally:
        procs = [noop] + [proc for proc, _, _ in servers.values()]
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
