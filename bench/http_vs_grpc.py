#!/usr/bin/env python3
"""Server CPU per decision over gRPC and over the HTTP/JSON face, on one banditd, in one run.

Starts `banditd` (embedded default configuration plus `[http] addr`, a fresh data directory,
fsync durability unless --periodic), then for each repetition drives it over both transports
in turn (the order alternates between repetitions) with the same `banditd-loadgen grpc`
closed loop, `--transport grpc` or `--transport http`, and reads the server's CPU time from
/proc (utime + stime of every thread) before and after. Reports the median CPU microseconds
per decision for each transport, their ratio, and the spread over the repetitions. The same
method as bench/cpu_per_call.py.

    cargo build --release --bin banditd --bin banditd-loadgen
    python3 bench/http_vs_grpc.py --mode decisions --reps 5
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_per_call import ROOT, decisions_of, free_port, threads_cpu, wait_port, wait_serving  # noqa: E402


def drive(loadgen, url, transport, args):
    cmd = [
        loadgen, "grpc", "--transport", transport, "--target", url, "--model", "wheel",
        "--env", "wheel:0.5", "--duration", args.duration, "--workers", str(args.workers),
        "--connections", str(args.connections), "--json", "--quiet",
    ]
    if args.mode == "decisions":
        cmd += ["--missing-rewards", "1.0"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["decisions", "rounds"], default="decisions")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--connections", type=int, default=4, help="gRPC connections (HTTP uses a pool)")
    ap.add_argument("--periodic", action="store_true", help="periodic durability instead of fsync")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    args = ap.parse_args()
    rel = os.path.join(args.target_dir, "release")
    loadgen = os.path.join(rel, "banditd-loadgen")
    env = dict(os.environ, RAYON_NUM_THREADS="1", RUST_LOG="warn")

    data = tempfile.mkdtemp(prefix="banditd-http-cpu-")
    port, metrics, http_port = free_port(), free_port(), free_port()
    text = subprocess.run([os.path.join(rel, "banditd"), "--print-default-config"],
                          capture_output=True, text=True, check=True).stdout
    if args.periodic:
        text = text.replace('durability = "fsync"', 'durability = "periodic"')
    text = text.replace("[http]\n", f'[http]\naddr = "127.0.0.1:{http_port}"\n', 1)
    config = os.path.join(data, "banditd.toml")
    with open(config, "w") as f:
        f.write(text)
    banditd = subprocess.Popen(
        [os.path.join(rel, "banditd"), "--config", config, "--grpc-addr", f"127.0.0.1:{port}",
         "--metrics-addr", f"127.0.0.1:{metrics}", "--data-dir", os.path.join(data, "data")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    targets = {"grpc": f"http://127.0.0.1:{port}", "http": f"http://127.0.0.1:{http_port}"}
    try:
        wait_port(port)
        wait_port(http_port)
        wait_serving(metrics)
        cpu = {"grpc": [], "http": []}
        rates = {"grpc": [], "http": []}
        for rep in range(args.reps):
            order = ["grpc", "http"] if rep % 2 == 0 else ["http", "grpc"]
            for transport in order:
                before = sum(threads_cpu(banditd.pid).values())
                t0 = time.time()
                report = drive(loadgen, targets[transport], transport, args)
                elapsed = time.time() - t0
                after = sum(threads_cpu(banditd.pid).values())
                n = decisions_of(report)
                cpu[transport].append((after - before) / n * 1e6)
                rates[transport].append(n / elapsed)
            print(f"rep {rep}: grpc {cpu['grpc'][-1]:.1f} µs/decision ({rates['grpc'][-1]:.0f}/s), "
                  f"http {cpu['http'][-1]:.1f} µs/decision ({rates['http'][-1]:.0f}/s)", file=sys.stderr)
        med = {k: statistics.median(v) for k, v in cpu.items()}
        summary = {
            "mode": args.mode,
            "durability": "periodic" if args.periodic else "fsync",
            "reps": args.reps,
            "load": f"{args.workers} workers, {args.duration} per transport per rep "
                    f"(gRPC over {args.connections} connections, HTTP/1.1 keep-alive pool)",
            "median_server_cpu_us_per_decision": med,
            "http_to_grpc_ratio": med["http"] / med["grpc"],
            # Each rep's own ratio: both transports ran back to back, so load from elsewhere
            # on the machine weighs on both alike; its spread is the noise.
            "paired_ratios": sorted(h / g for h, g in zip(cpu["http"], cpu["grpc"])),
            "median_paired_ratio": statistics.median(h / g for h, g in zip(cpu["http"], cpu["grpc"])),
            "range_cpu_us": {k: [min(v), max(v)] for k, v in cpu.items()},
            "median_decisions_per_s": {k: statistics.median(v) for k, v in rates.items()},
            "all": cpu,
        }
        print(json.dumps(summary, indent=2))
    finally:
        banditd.terminate()
        banditd.wait(timeout=60)


if __name__ == "__main__":
    main()
