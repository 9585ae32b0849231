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
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    args = ap.parse_args()
    rel = os.path.join(args.target_dir, "release")
    loadgen = os.path.join(rel, "banditd-loadgen")
    env = dict(os.environ, RAYON_NUM_THREADS="1", RUST_LOG="warn")

    noop_port = free_port()
    noop = subprocess.Popen([os.path.join(rel, "examples", "noop_server"), "--addr", f"127.0.0.1:{noop_port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = tempfile.mkdtemp(prefix="banditd-cpu-")
    port, metrics = free_port(), free_port()
    server_env = dict(env)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.learner_nice is not None:
        overrides["learner_nice"] = str(args.learner_nice)
    if args.periodic or overrides:
        config = os.path.join(data, "banditd.toml")
        text = subprocess.run([os.path.join(rel, "banditd"), "--print-default-config"],
                              capture_output=True, text=True, check=True).stdout
        if args.periodic:
            text = text.replace('durability = "fsync"', 'durability = "periodic"')
        lines = text.splitlines()
        for key, value in overrides.items():
            if not any(line.startswith(f"{key} = ") for line in lines):
                sys.exit(f"the default configuration has no `{key} = ` line to replace")
            lines = [f"{key} = {value}" if line.startswith(f"{key} = ") else line for line in lines]
        text = "\n".join(lines) + "\n"
        with open(config, "w") as f:
            f.write(text)
        server_env["BANDITD_CONFIG"] = config
    banditd = subprocess.Popen(
        [os.path.join(rel, "banditd"), "--grpc-addr", f"127.0.0.1:{port}",
         "--metrics-addr", f"127.0.0.1:{metrics}", "--data-dir", os.path.join(data, "data")],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(noop_port)
        wait_port(port)
        wait_serving(metrics)
        results = {"noop": [], "banditd": [], "banditd_no_learner": [], "log_writer": []}
        rates = {"noop": [], "banditd": []}
        for rep in range(args.reps):
            for name, proc, p in (("noop", noop, noop_port), ("banditd", banditd, port)):
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
                if name == "banditd":
                    learners = sum(v for k, v in delta.items() if k.startswith("learner-"))
                    results["banditd_no_learner"].append((total - learners) / n * 1e6)
                    results["log_writer"].append(delta.get("log-writer", 0.0) / n * 1e6)
                    threads = ", ".join(f"{k} {v / n * 1e6:.1f}" for k, v in sorted(delta.items()) if v > 0)
                    print(f"rep {rep}: banditd µs/decision by thread: {threads}", file=sys.stderr)
            print(f"rep {rep}: noop {results['noop'][-1]:.1f} µs, banditd {results['banditd'][-1]:.1f} µs "
                  f"({results['banditd_no_learner'][-1]:.1f} without learners, log writer "
                  f"{results['log_writer'][-1]:.2f}); {rates['noop'][-1]:.0f} vs {rates['banditd'][-1]:.0f} "
                  f"decisions/s", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in results.items()}
        summary = {
            "mode": args.mode,
            "durability": "periodic" if args.periodic else "fsync",
            "overrides": overrides,
            "reps": args.reps,
            "load": f"{args.workers} workers over {args.connections} connections, {args.duration} per server per rep",
            "median_cpu_us_per_decision": med,
            "ratio_to_noop": med["banditd"] / med["noop"],
            "ratio_to_noop_without_learners": med["banditd_no_learner"] / med["noop"],
            "median_decisions_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "throughput_ratio": statistics.median(rates["banditd"]) / statistics.median(rates["noop"]),
            "all": results,
        }
        print(json.dumps(summary, indent=2))
    finally:
        for p in (noop, banditd):
            p.terminate()
        for p in (noop, banditd):
            p.wait(timeout=60)


if __name__ == "__main__":
    main()
