//! End-to-end runs of `banditd-loadgen`: a short seeded gRPC run against the real `banditd`
//! binary on free ports (the report's fields, and `banditd_regret_sum` on `/metrics` equal
//! to the regret the tool sent), the in-process mode's report and determinism, and `dump`.

use std::{
    path::Path,
    process::{Command, Output},
};

use serde_json::Value;

mod common;

use common::{LOADGEN, free_addr, loadgen, scrape, series, start_banditd};

/// The value of a metric line `name{labels} value`.
fn metric(text: &str, name: &str) -> f64 {
    series(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}
/// Splits a command line on whitespace (the paths used here have none).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_owned).collect()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn f(report: &Value, key: &str) -> f64 {
    report[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {report}"))
}

fn u(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not an integer in {report}"))
}

fn assert_latency_ordered(report: &Value, rpc: &str) {
    let l = &report["latency_us"][rpc];
    let get = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{rpc}.{k}: {l}"));
    let (p50, p90, p99, max) = (get("p50"), get("p90"), get("p99"), get("max"));
    assert!(
        0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{rpc}: {l}"
    );
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0),
        "{what}: {a} != {b}"
    );
}

/// A short seeded closed-loop run against the real binary, with the built-in no-op server
/// as baseline, then a per-arm run with missing rewards on the same server.
#[test]
fn grpc_run_against_banditd() {
    let server = start_banditd(&[]);
    let target = format!("http://{}", server.grpc);
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("regret.svg");
    let plot_arg = plot.display();

    let output = loadgen(&words(&format!(
        "grpc --target {target} --model wheel --env wheel:0.5 --seed 1 --rounds 500 \
         --workers 4 --connections 2 --baseline builtin --json --quiet --plot {plot_arg}"
    )));
    let report = json(&output);
    assert_eq!(report["mode"], "grpc");
    assert_eq!(u(&report, "rounds"), 500);
    assert_eq!(u(&report, "decisions"), 500);
    assert_eq!(u(&report, "rewards_sent"), 500);
    assert_eq!(u(&report, "rewards_accepted"), 500);
    assert_eq!(u(&report, "errors_total"), 0, "{}", report["errors"]);
    let regret = f(&report, "regret");
    assert!(regret > 0.0);
    assert_close(f(&report, "regret_reported"), regret, "regret_reported");
    let normalized = f(&report, "normalized_regret");
    assert!(0.0 < normalized && normalized < 200.0, "{normalized}");
    assert_close(
        normalized,
        100.0 * regret / f(&report, "uniform_regret"),
        "normalized_regret",
    );
    assert!(f(&report, "decisions_per_s") > 0.0);
    assert!(f(&report, "mean_reward") > 0.0);
    assert_latency_ordered(&report, "choose_arm");
    assert_latency_ordered(&report, "report_reward");
    let curve = report["curve"].as_array().unwrap();
    assert!(curve.len() > 10);
    assert_eq!(curve.last().unwrap()["decisions"], 500);
    assert_eq!(report["server_model"]["decisions"], 500);

    let baseline = &report["baseline"];
    assert_eq!(u(baseline, "decisions"), 500);
    assert_eq!(u(baseline, "errors_total"), 0, "{}", baseline["errors"]);
    let ratio = f(&report, "throughput_ratio");
    assert_close(
        ratio,
        f(&report, "decisions_per_s") / f(baseline, "decisions_per_s"),
        "throughput_ratio",
    );
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "not an SVG plot"
    );

    // The regret counter on /metrics is exactly what the tool sent.
    let metrics = scrape(server.metrics);
    assert_close(
        metric(&metrics, "banditd_regret_sum{model=\"wheel\"}"),
        regret,
        "banditd_regret_sum",
    );

    // Per-arm features, missing rewards: regret counts every decision, the server only
    // the reported ones.
    let output = loadgen(&words(&format!(
        "grpc --target {target} --model items --env per-arm --seed 2 --rounds 300 \
         --workers 3 --missing-rewards 0.2 --reward-delay fixed:5ms --json --quiet"
    )));
    let report = json(&output);
    assert_eq!(u(&report, "decisions"), 300);
    assert_eq!(u(&report, "errors_total"), 0, "{}", report["errors"]);
    let missing = u(&report, "rewards_missing");
    assert!((20..=100).contains(&missing), "{missing} of 300 missing");
    assert_eq!(u(&report, "rewards_accepted"), 300 - missing);
    assert!(f(&report, "regret_reported") <= f(&report, "regret"));
    let metrics = scrape(server.metrics);
    assert_close(
        metric(&metrics, "banditd_regret_sum{model=\"items\"}"),
        f(&report, "regret_reported"),
        "banditd_regret_sum (items)",
    );
    assert_eq!(
        metric(&metrics, "banditd_rewards_total{model=\"items\"}") as u64,
        300 - missing
    );
}

/// The in-process mode: report fields, and the same seeds give the same regret.
#[test]
fn inproc_report_and_determinism() {
    let args = words(
        "inproc --env wheel:0.5 --env per-arm:4,4,20,5 --seeds 1,2 --rounds 300 --json --quiet",
    );
    let first = json(&loadgen(&args));
    assert_eq!(first["mode"], "inproc");
    assert_eq!(u(&first, "rounds"), 300);
    let runs = first["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for run in runs {
        assert_eq!(u(run, "rounds"), 300);
        assert!(f(run, "regret") >= 0.0);
        assert!(f(run, "uniform_regret") > 0.0);
        let n = f(run, "normalized_regret");
        assert!((0.0..200.0).contains(&n), "{run}");
        assert_eq!(u(run, "steps"), 600); // updates_per_reward = 2
        assert_eq!(
            run["curve"].as_array().unwrap().last().unwrap()["decisions"],
            300
        );
    }
    let summary = first["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 2);
    let (a, b) = (
        f(&runs[0], "normalized_regret"),
        f(&runs[1], "normalized_regret"),
    );
    assert_close(
        f(&summary[0], "normalized_regret_mean"),
        (a + b) / 2.0,
        "mean",
    );
    assert_close(
        f(&summary[0], "normalized_regret_std"),
        (a - b).abs() / 2f64.sqrt(),
        "std",
    );

    let second = json(&loadgen(&args));
    let regrets = |r: &Value| -> Vec<f64> {
        r["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| f(run, "regret"))
            .collect()
    };
    assert_eq!(regrets(&first), regrets(&second));
}

/// `dump` writes a header line and one line per round; a bad spec fails clearly.
#[test]
fn dump_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rounds.jsonl");
    let out = path.display();
    loadgen(&words(&format!(
        "dump --env wheel:0.95 --seed 3 --rounds 5 -o {out}"
    )));
    let text = std::fs::read_to_string(Path::new(&path)).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[0]["env"], "wheel(delta=0.95)");
    assert_eq!(lines[0]["arm_ids"].as_array().unwrap().len(), 5);
    for (t, round) in lines[1..].iter().enumerate() {
        assert_eq!(round["t"], t);
        assert_eq!(round["context"].as_array().unwrap().len(), 2);
        assert_eq!(round["candidates"].as_array().unwrap().len(), 5);
        assert_eq!(round["expected"].as_array().unwrap().len(), 5);
        assert_eq!(round["rewards"].as_array().unwrap().len(), 5);
    }

    let output = Command::new(LOADGEN)
        .args(["inproc", "--env", "whee:0.5", "--rounds", "10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("\"whee:0.5\"") && stderr.contains("wheel:DELTA"),
        "{stderr}"
    );

    // No server there: a clear connection error, not a panic.
    let port = free_addr().port();
    let output = Command::new(LOADGEN)
        .args([
            "grpc",
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--rounds",
            "10",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to http://127.0.0.1:"),
        "{stderr}"
    );
}

/// `--server-metrics` and `--baseline-metrics`: the server's CPU over the run, read from its
/// `process_cpu_seconds_total`, per decision, and the ratio of the two servers' (a second
/// banditd stands in for the no-op server: any server exporting the series will do). A
/// builtin baseline, which shares the load generator's CPU, is refused with a clear error.
#[test]
fn grpc_reports_server_cpu() {
    let server = start_banditd(&[]);
    let baseline = start_banditd(&[]);
    let output = loadgen(&words(&format!(
        "grpc --target http://{} --server-metrics http://{}/metrics --baseline http://{} \
         --baseline-metrics http://{} --model wheel --env wheel:0.5 --seed 1 --rounds 400 \
         --workers 4 --json --quiet",
        server.grpc, server.metrics, baseline.grpc, baseline.metrics
    )));
    let report = json(&output);
    assert_eq!(u(&report, "decisions"), 400);
    let cpu = f(&report, "server_cpu_s");
    assert!(cpu > 0.0, "server_cpu_s {cpu}");
    assert_close(
        f(&report, "server_cpu_us_per_decision"),
        cpu * 1e6 / 400.0,
        "server_cpu_us_per_decision",
    );
    let base = &report["baseline"];
    let base_per = f(base, "server_cpu_us_per_decision");
    assert!(
        base_per > 0.0,
        "baseline server_cpu_us_per_decision {base_per}"
    );
    assert_close(
        f(&report, "server_cpu_ratio"),
        f(&report, "server_cpu_us_per_decision") / base_per,
        "server_cpu_ratio",
    );

    let output = Command::new(LOADGEN)
        .args([
            "grpc",
            "--target",
            &format!("http://{}", server.grpc),
            "--rounds",
            "10",
            "--baseline",
            "builtin",
            "--baseline-metrics",
            &format!("http://{}", baseline.metrics),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--baseline-metrics"), "{stderr}");
}
