//! `deploy/` against the real thing: the real `banditd` binary running the deployment's model
//! configuration (deploy/k8s/base/banditd.toml), scraped by a real Prometheus (Debian's
//! `prometheus`, on PATH) running the project's scrape config and rules
//! (deploy/prometheus/), driven by the real load generator. Prometheus's HTTP API must then
//! show the regret, decision, latency and learner series agreeing with the load generator's
//! report; every recording and alerting rule must evaluate without error; every query of the
//! Grafana dashboard must parse and, where its metrics exist, return data.
//!
//! Without `prometheus` on PATH the Prometheus test is skipped with a message, except in CI
//! (`CI` set), where it fails: `.ci/run` installs it. The other tests need nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

mod common;

use common::loadgen;
const BANDITD: &str = env!("CARGO_BIN_EXE_banditd");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A child process killed on drop.
struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// A port that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port on 127.0.0.1")
}

/// `prometheus` on PATH, or None when the test may be skipped; panics in CI.
fn prometheus_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
        assert!(
            !ci,
            "`prometheus` is not on PATH and CI is set: .ci/run must install Debian's `prometheus` \
             package; this test cannot be skipped in CI"
        );
        eprintln!(
            "SKIPPED prometheus_scrapes_banditd: `prometheus` is not on PATH \
             (apt-get install prometheus, as .ci/run does)"
        );
    }
    found
}

// --- HTTP over std only (no client crate) -------------------------------------------------------

/// GET `path` (HTTP/1.0: no chunked encoding, the server closes). (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns Some, for at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// The raw JSON answer of an instant query (status "success" or "error").
    fn query_raw(&self, expr: &str) -> Value {
        let (status, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(expr)),
        )
        .unwrap_or_else(|e| panic!("Prometheus query {expr:?}: {e}"));
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {status} {body:?} to {expr:?}: {e}"))
    }

    /// The result vector of a query that must succeed.
    fn query(&self, expr: &str) -> Vec<Value> {
        let v = self.query_raw(expr);
        assert_eq!(v["status"], "success", "query {expr:?}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The single value of a query, if it has exactly one series.
    fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The project's prometheus.yml with the target, the intervals and the rule path made local.
fn test_prometheus_config(target: SocketAddr) -> String {
    let rules = repo().join("deploy/prometheus/rules");
    let mut config = read("deploy/prometheus/prometheus.yml");
    for (from, to) in [
        ("\"banditd:9464\"", format!("\"{target}\"")),
        ("scrape_interval: 5s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 5s",
            "evaluation_interval: 1s".to_owned(),
        ),
        ("- rules/*.yml", format!("- {}/*.yml", rules.display())),
    ] {
        assert_eq!(
            config.matches(from).count(),
            1,
            "deploy/prometheus/prometheus.yml no longer has exactly one `{from}` (this test \
             rewrites it); update the test with the config"
        );
        config = config.replace(from, &to);
    }
    config
}

fn start_prometheus(binary: &Path, dir: &Path, target: SocketAddr) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, test_prometheus_config(target)).unwrap();
    for attempt in 0..3 {
        let addr = free_addr();
        let log = dir.join(format!("prometheus-{attempt}.log"));
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join(format!("tsdb-{attempt}")).display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start prometheus");
        let mut prom = Prometheus {
            proc: Proc { child },
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !prom.proc.exited() {
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                return prom;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("prometheus attempt {attempt} failed:\n{}", prom.logs());
    }
    panic!("prometheus did not become ready in 3 attempts");
}

/// The real banditd with the deployment's configuration, on free loopback ports.
fn start_banditd(data_dir: &Path) -> (Proc, SocketAddr, SocketAddr) {
    let config = repo().join("deploy/k8s/base/banditd.toml");
    for _attempt in 0..3 {
        let (grpc, metrics) = (free_addr(), free_addr());
        let child = Command::new(BANDITD)
            .arg("--config")
            .arg(&config)
            .args(["--grpc-addr", &grpc.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start banditd");
        let mut server = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && !server.exited() {
            if TcpStream::connect(grpc).is_ok() && TcpStream::connect(metrics).is_ok() {
                return (server, grpc, metrics);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("banditd (with deploy/k8s/base/banditd.toml) did not start listening in 3 attempts");
}

fn num(report: &Value, path: &[&str]) -> f64 {
    let mut v = report;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing or not a number in the loadgen report"))
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
        "{what}: Prometheus has {a}, the load generator reported {b}"
    );
}

// --- What the service exports, what the rules record, what the dashboard asks ---------------------

/// Metric names exported by the service: the `pub const X: &str = "banditd_…"` of
/// src/metrics.rs, and which of them are histograms (used with `histogram!`).
fn exported_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let source = read("src/metrics.rs");
    let mut by_const = BTreeMap::new();
    for line in source.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("pub const ")
            && let Some((name, value)) = rest.split_once(": &str = \"")
            && let Some(value) = value.strip_suffix("\";")
        {
            by_const.insert(name.to_owned(), value.to_owned());
        }
    }
    let histograms = source
        .split("histogram!(")
        .skip(1)
        .filter_map(|rest| {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            by_const.get(&name).cloned()
        })
        .collect();
    let all: BTreeSet<String> = by_const.into_values().collect();
    assert!(
        all.len() >= 15 && all.iter().all(|n| n.starts_with("banditd_")),
        "cannot read the metric names of src/metrics.rs: {all:?}"
    );
    (all, histograms)
}

/// Recording rules of deploy/prometheus/rules/*.yml: name -> expression text. A line scan of
/// the project's own files (no YAML crate): `- record: NAME` then `expr:`, inline or as a
/// `|` block, up to the next list item.
fn recording_rules() -> BTreeMap<String, String> {
    let mut rules = BTreeMap::new();
    for entry in std::fs::read_dir(repo().join("deploy/prometheus/rules")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut current: Option<(String, String)> = None;
        let mut in_expr = false;
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') || t.is_empty() {
                continue;
            }
            if t.starts_with("- ") {
                if let Some((name, expr)) = current.take() {
                    rules.insert(name, expr);
                }
                in_expr = false;
                if let Some(name) = t.strip_prefix("- record:") {
                    current = Some((name.trim().to_owned(), String::new()));
                }
                continue;
            }
            if let Some((_, expr)) = current.as_mut() {
                if let Some(rest) = t.strip_prefix("expr:") {
                    in_expr = true;
                    expr.push_str(rest.trim().trim_start_matches('|'));
                } else if in_expr {
                    expr.push(' ');
                    expr.push_str(t);
                }
            }
        }
        if let Some((name, expr)) = current.take() {
            rules.insert(name, expr);
        }
    }
    assert!(
        rules.len() >= 10,
        "cannot read the recording rules: {rules:?}"
    );
    rules
}

/// Metric-like names in a PromQL expression (outside string literals): `banditd_*` names and
/// recording-rule names (`level:metric:ops`).
fn metric_refs(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut token = String::new();
    let mut quoted = None;
    for c in expr.chars().chain([' ']) {
        if let Some(q) = quoted {
            if c == q {
                quoted = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
            continue;
        }
        if token.starts_with("banditd_")
            || (token.contains(':')
                && token
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic()))
        {
            names.insert(std::mem::take(&mut token));
        }
        token.clear();
        if c == '"' || c == '\'' || c == '`' {
            quoted = Some(c);
        }
    }
    names
}

/// The exported metrics an expression reads, through recording rules; Err names an unknown one.
fn resolve(
    expr: &str,
    exported: &BTreeSet<String>,
    histograms: &BTreeSet<String>,
    rules: &BTreeMap<String, String>,
    depth: usize,
) -> Result<BTreeSet<String>, String> {
    assert!(depth < 10, "recording rules refer to each other in a loop");
    let mut out = BTreeSet::new();
    for name in metric_refs(expr) {
        if exported.contains(&name) {
            out.insert(name);
        } else if let Some(rule) = rules.get(&name) {
            out.extend(resolve(rule, exported, histograms, rules, depth + 1)?);
        } else if let Some(base) = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| histograms.contains(*base))
        {
            out.insert(base.to_owned());
        } else {
            return Err(name);
        }
    }
    Ok(out)
}

/// Every query of the dashboards (panel targets and variable queries): (where, expr).
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    let dir = repo().join("deploy/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let dash: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let mut ids = BTreeSet::new();
        for panel in dash["panels"].as_array().expect("no panels") {
            let id = panel["id"].as_u64().expect("panel without id");
            assert!(ids.insert(id), "{name}: panel id {id} twice");
            let g = &panel["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{name}: panel {id} wider than the grid");
            if panel["type"] == "row" {
                continue;
            }
            let title = panel["title"].as_str().unwrap_or_default();
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{title}: no targets"));
            assert!(!targets.is_empty(), "{name}: panel {title:?} has no query");
            for t in targets {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{title}: target without expr"));
                assert!(!expr.trim().is_empty(), "{title}: empty expr");
                queries.push((format!("{name} panel {title:?}"), expr.to_owned()));
            }
        }
        for var in dash["templating"]["list"].as_array().into_iter().flatten() {
            if var["type"] == "query" {
                let q = var["query"]["query"]
                    .as_str()
                    .or(var["query"].as_str())
                    .unwrap();
                // label_values(METRIC, label) -> METRIC
                let inner = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.rsplit_once(','))
                    .map_or(q, |(m, _)| m);
                queries.push((format!("{name} variable {}", var["name"]), inner.to_owned()));
            }
        }
    }
    queries
}

/// Grafana's variables replaced by what makes a plain PromQL query of them.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "1m"),
        ("$__range", "5m"),
        ("${job}", ".*"),
        ("${model}", ".*"),
        ("$job", ".*"),
        ("$model", ".*"),
    ] {
        e = e.replace(var, value);
    }
    assert!(!e.contains('$'), "unknown Grafana variable in {expr:?}");
    e
}

/// Every dashboard query names only metrics the service exports (or recording rules built on
/// them), every recording rule too, and the dashboard shows what the issue asks for.
#[test]
fn dashboard_and_rules_name_only_exported_metrics() {
    let (exported, histograms) = exported_metrics();
    let rules = recording_rules();
    for (name, expr) in &rules {
        resolve(expr, &exported, &histograms, &rules, 0).unwrap_or_else(|bad| {
            panic!("recording rule {name} reads {bad}, which banditd does not export")
        });
    }
    let mut shown = BTreeSet::new();
    for (place, expr) in dashboard_queries() {
        let metrics = resolve(&substitute(&expr), &exported, &histograms, &rules, 0)
            .unwrap_or_else(|bad| {
                panic!("{place}: {bad} is neither a banditd metric nor a recording rule")
            });
        shown.extend(metrics);
    }
    for wanted in [
        "banditd_regret_sum",
        "banditd_reward_sum",
        "banditd_decisions_total",
        "banditd_rewards_total",
        "banditd_choose_arm_duration_seconds",
        "banditd_report_reward_duration_seconds",
        "banditd_learner_loss",
        "banditd_learner_steps_total",
        "banditd_learner_lag_records",
        "banditd_replay_size",
        "banditd_pending_decisions",
        "banditd_decisions_expired_total",
        "banditd_decisions_evicted_total",
        "banditd_model_version",
    ] {
        assert!(
            shown.contains(wanted),
            "the dashboard does not show {wanted}"
        );
    }
}

/// The deployment's model configuration is valid for this binary.
#[test]
fn deploy_config_is_valid() {
    let config = banditd::Config::from_file(&repo().join("deploy/k8s/base/banditd.toml"))
        .unwrap_or_else(|e| panic!("deploy/k8s/base/banditd.toml: {e}"));
    let names: Vec<_> = config.models.iter().map(|m| m.name.as_str()).collect();
    // compose's load generator drives `wheel`.
    assert!(names.contains(&"wheel"), "{names:?}");
}

/// The real pipeline: banditd (deployment config) -> Prometheus (project config and rules) ->
/// HTTP API, checked against the load generator's report; then the dashboard's queries; then
/// the container healthcheck script and compose's load generator command.
#[test]
fn prometheus_scrapes_banditd() {
    let Some(prometheus_bin) = prometheus_binary() else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mut banditd, grpc, metrics) = start_banditd(&dir.path().join("data"));
    let prom = start_prometheus(&prometheus_bin, dir.path(), metrics);

    wait_for(
        "the banditd target to be up",
        Duration::from_secs(20),
        || (prom.value(r#"up{job="banditd"}"#) == Some(1.0)).then_some(()),
    );

    // A short seeded run.
    let rounds = 2000;
    let output = loadgen(&[
        "grpc".into(),
        "--target".into(),
        format!("http://{grpc}"),
        "--model".into(),
        "wheel".into(),
        "--env".into(),
        "wheel:0.5".into(),
        "--seed".into(),
        "7".into(),
        "--rounds".into(),
        rounds.to_string(),
        "--workers".into(),
        "4".into(),
        "--connections".into(),
        "2".into(),
        "--json".into(),
        "--quiet".into(),
    ]);
    let report: Value = serde_json::from_slice(&output.stdout).expect("loadgen JSON");
    assert_eq!(num(&report, &["decisions"]), rounds as f64);
    assert_eq!(num(&report, &["errors_total"]), 0.0, "{}", report["errors"]);
    let regret = num(&report, &["regret_reported"]);
    assert!(regret > 0.0);

    // Wait for a scrape after the last reward (bounded; scrape interval 1 s).
    let sel = r#"job="banditd",model="wheel""#;
    wait_for(
        "Prometheus to see every decision",
        Duration::from_secs(15),
        || {
            (prom.value(&format!("sum(banditd_decisions_total{{{sel}}})")) == Some(rounds as f64)
                && prom.value(&format!("banditd_rewards_total{{{sel}}}"))
                    == Some(num(&report, &["rewards_accepted"])))
            .then_some(())
        },
    );

    // Regret: exactly what the load generator reported with its rewards.
    let prom_regret = prom
        .value(&format!("banditd_regret_sum{{{sel}}}"))
        .expect("regret series");
    assert_close(prom_regret, regret, "banditd_regret_sum");
    assert_close(
        prom_regret,
        num(&report, &["regret"]),
        "regret (every reward reported)",
    );

    // Decisions: one series per arm, all of the wheel's arms, summing to the rounds.
    let arms = prom.query(&format!("banditd_decisions_total{{{sel}}}"));
    let arm_ids: BTreeSet<_> = arms
        .iter()
        .map(|s| s["metric"]["arm"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        arm_ids.len() >= 2
            && arm_ids
                .iter()
                .all(|a| ["0", "1", "2", "3", "4"].contains(&a.as_str())),
        "{arm_ids:?}"
    );

    // Latency: one observation per call; the server's quantiles (from the histogram buckets)
    // are at most the bucket boundary above the client's (server time is part of client time).
    let buckets = [
        0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.000_75,
        0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ];
    for (metric, rpc) in [
        ("banditd_choose_arm_duration_seconds", "choose_arm"),
        ("banditd_report_reward_duration_seconds", "report_reward"),
    ] {
        assert_eq!(
            prom.value(&format!("{metric}_count{{{sel}}}")),
            Some(num(&report, &["latency_us", rpc, "count"])),
            "{metric}_count"
        );
        for q in ["p50", "p99"] {
            let server = prom
                .value(&format!(
                    "histogram_quantile(0.{}, sum by (le) ({metric}_bucket{{{sel}}}))",
                    &q[1..]
                ))
                .expect("quantile");
            let client = num(&report, &["latency_us", rpc, q]) / 1e6;
            let bound = buckets
                .iter()
                .copied()
                .find(|b| *b >= client)
                .unwrap_or(f64::INFINITY);
            assert!(
                server > 0.0 && server <= bound,
                "{metric} {q}: server {server} s, client {client} s (bucket bound {bound})"
            );
        }
    }

    // Learner: it stepped (2 updates per reward at most), published and filled its replay.
    let steps = wait_for("learner steps", Duration::from_secs(15), || {
        prom.value(&format!("banditd_learner_steps_total{{{sel}}}"))
            .filter(|s| *s > 0.0)
    });
    let skipped = prom
        .value(&format!("banditd_learner_steps_skipped_total{{{sel}}}"))
        .unwrap_or(0.0);
    assert!(
        steps + skipped <= 2.0 * rounds as f64,
        "steps {steps} + skipped {skipped}"
    );
    assert!(
        prom.value(&format!("banditd_model_version{{{sel}}}"))
            .unwrap_or(0.0)
            > 0.0
    );
    let replay = prom
        .value(&format!("banditd_replay_size{{{sel}}}"))
        .expect("replay size");
    assert!(replay > 0.0 && replay <= rounds as f64, "replay {replay}");
    assert!(
        prom.value(&format!("banditd_learner_loss{{{sel}}}"))
            .is_some_and(f64::is_finite)
    );

    // Recording rules: evaluated, with values.
    for rule in [
        "model:banditd_decisions:rate1m",
        "model:banditd_rewards:rate1m",
        "model:banditd_regret_per_reward:ratio1m",
        "model:banditd_learner_steps:rate1m",
        "model:banditd_choose_arm_duration_seconds:p99_1m",
    ] {
        let v = wait_for(rule, Duration::from_secs(15), || {
            prom.value(&format!("{rule}{{{sel}}}"))
                .filter(|v| v.is_finite())
        });
        assert!(v > 0.0, "{rule} = {v}");
    }
    // Every rule of the project's rule files evaluates without error.
    wait_for(
        "every rule to be evaluated ok",
        Duration::from_secs(15),
        || {
            let (_, body) = http_get(prom.addr, "/api/v1/rules").ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let rules: Vec<Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            assert!(rules.len() >= 20, "rules not loaded: {v}");
            for r in &rules {
                assert_ne!(
                    r["health"], "err",
                    "rule {} fails: {}",
                    r["name"], r["lastError"]
                );
            }
            rules.iter().all(|r| r["health"] == "ok").then_some(())
        },
    );
    let firing = prom.query(r#"ALERTS{alertstate="firing"}"#);
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy run: {firing:?}"
    );

    // The dashboard: every query parses in Prometheus, and returns data when every metric it
    // reads is already exported (event counters such as evictions only appear once they happen).
    let (exported, histograms) = exported_metrics();
    let rules = recording_rules();
    let (_, live) = http_get(metrics, "/metrics").expect("scrape banditd");
    let live: BTreeSet<String> = live
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| histograms.contains(*b)))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    for (place, expr) in dashboard_queries() {
        let query = substitute(&expr);
        let answer = prom.query_raw(&query);
        assert_eq!(
            answer["status"], "success",
            "{place}: Prometheus refuses {query:?}: {} {}",
            answer["errorType"], answer["error"]
        );
        let reads = resolve(&query, &exported, &histograms, &rules, 0).unwrap();
        if !reads.is_empty() && reads.iter().all(|m| live.contains(m)) {
            wait_for(
                &format!("{place} to show data ({query})"),
                Duration::from_secs(10),
                || (!prom.query(&query).is_empty()).then_some(()),
            );
        }
    }

    // The container HEALTHCHECK script: healthy against the live metrics port, not against a
    // closed one.
    let healthcheck = repo().join("deploy/docker-healthcheck.sh");
    let run_check = |addr: SocketAddr| {
        Command::new("bash")
            .arg(&healthcheck)
            .env("BANDITD_METRICS_ADDR", format!("0.0.0.0:{}", addr.port()))
            .output()
            .expect("cannot run bash")
    };
    let ok = run_check(metrics);
    assert!(
        ok.status.success(),
        "healthcheck failed: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(
        !run_check(free_addr()).status.success(),
        "healthcheck passed on a closed port"
    );

    // compose's load generator command runs against this binary (shortened to 2 s).
    let compose = read("deploy/compose.yaml");
    let mut args = Vec::new();
    let mut in_loadgen = false;
    let mut in_command = false;
    for line in compose.lines() {
        if line.starts_with("  ") && !line.starts_with("   ") {
            in_loadgen = line.trim() == "loadgen:";
            in_command = false;
        } else if in_loadgen && line.trim() == "command:" {
            in_command = true;
        } else if in_command {
            match line.trim().strip_prefix("- ") {
                Some(arg) => args.push(arg.trim_matches('"').to_owned()),
                None => in_command = false,
            }
        }
    }
    assert!(
        args.len() > 4 && args[0] == "grpc",
        "cannot read compose's loadgen command: {args:?}"
    );
    for arg in &mut args {
        if arg.as_str() == "http://banditd:50051" {
            *arg = format!("http://{grpc}");
        } else if arg.as_str() == "1h" {
            *arg = "2s".into();
        }
    }
    assert!(
        args.contains(&format!("http://{grpc}")) && args.contains(&"2s".to_owned()),
        "{args:?}"
    );
    loadgen(&args);

    assert!(!banditd.exited(), "banditd exited during the test");
    eprintln!("prometheus_scrapes_banditd: {:?}", started.elapsed());
}
