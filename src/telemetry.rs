//! CPU time as metrics: the process's (`process_cpu_seconds_total` and the other standard
//! process series, from the `metrics-process` crate, which implements the Prometheus client
//! conventions for every platform) and, on Linux, per thread role
//! (`banditd_thread_cpu_seconds_total{thread}`), so that a dashboard shows a saturated learner
//! or log writer, and the load generator can divide CPU by calls.
//!
//! Thread roles: `log-writer`, `learner-<model>` (bounded by the configuration), `serving`
//! (tokio's workers: transport, validation and decisions) and `other`.

use std::time::Duration;

use metrics::{Unit, describe_gauge, gauge};

/// CPU seconds by thread role, a gauge holding a running total (a gauge so that fractions
/// of a second are kept; `rate()` applies as to a counter).
pub const THREAD_CPU_SECONDS: &str = "banditd_thread_cpu_seconds_total";

/// How often the process and thread CPU series are refreshed.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Registers the series' help text.
pub fn describe() {
    metrics_process::Collector::default().describe();
    describe_gauge!(
        THREAD_CPU_SECONDS,
        Unit::Seconds,
        "CPU time (user + system) used by banditd's threads, by role: serving (tokio workers), log-writer, learner-<model>, other."
    );
}

/// Refreshes the series every [`PERIOD`] on a thread of its own, for the process's life.
pub fn spawn() {
    let spawned = std::thread::Builder::new()
        .name("telemetry".into())
        .spawn(|| {
            let collector = metrics_process::Collector::default();
            loop {
                collector.collect();
                for (role, seconds) in threads_cpu() {
                    gauge!(THREAD_CPU_SECONDS, "thread" => role).set(seconds);
                }
                std::thread::sleep(PERIOD);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the CPU telemetry thread");
    }
}

/// CPU seconds per thread role, from `/proc/self/task/*/stat` (empty elsewhere).
fn threads_cpu() -> Vec<(String, f64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    // USER_HZ, the unit of utime and stime: 100 on every Linux ABI (sysconf(_SC_CLK_TCK)).
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut by_role: Vec<(String, f64)> = Vec::new();
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = parse_stat(&stat) else {
            continue;
        };
        let role = role_of(name);
        let seconds = ticks as f64 / TICKS_PER_SECOND;
        match by_role.iter_mut().find(|(r, _)| *r == role) {
            Some((_, total)) => *total += seconds,
            None => by_role.push((role, seconds)),
        }
    }
    by_role
}

/// The thread name and its utime + stime in ticks, from a `/proc/<pid>/task/<tid>/stat` line.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = &stat[open + 1..close];
    let mut fields = stat[close + 1..].split_whitespace();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

fn role_of(name: &str) -> String {
    if name == "log-writer" || name.starts_with("learner-") {
        name.to_owned()
    } else if name.starts_with("tokio-rt") {
        "serving".to_owned()
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// utime and stime are read after the name, which may hold spaces and parentheses.
    #[test]
    fn stat_fields_after_a_tricky_name() {
        let line = "42 (learner-a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0 1 0";
        assert_eq!(parse_stat(line), Some(("learner-a (b) c", 267)));
        assert_eq!(role_of("tokio-rt-worker"), "serving");
        assert_eq!(role_of("log-writer"), "log-writer");
        assert_eq!(role_of("telemetry"), "other");
    }

    /// This test's own process has threads with CPU time (after 200 ms of spinning: 20 ticks).
    #[test]
    fn reads_this_process() {
        let until = std::time::Instant::now() + Duration::from_millis(200);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        assert!(threads_cpu().iter().map(|(_, s)| s).sum::<f64>() > 0.0);
    }
}
