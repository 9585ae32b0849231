//! `--server-metrics` / `--baseline-metrics`: the server's own CPU time around a run, read
//! from its Prometheus endpoint (`process_cpu_seconds_total`, which banditd and
//! `examples/noop_server --metrics-addr` export), so that the report carries server CPU per
//! decision and, with both, banditd's ratio to the no-op server under the same load.
//!
//! Both servers refresh the series every [`banditd::telemetry::PERIOD`] (not on scrape), so
//! each reading waits one period and a margin first: the reading then includes every CPU
//! second spent up to the wait, and the server is idle during the wait (the load is not
//! running), so what the wait itself adds is the idle server's few milliseconds.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The series read (seconds of user + system CPU of the whole process).
const SERIES: &str = "process_cpu_seconds_total";

/// Largest /metrics answer read (banditd's is tens of KB).
const MAX_BODY: usize = 16 << 20;

/// How long one scrape may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A server's CPU counter read before a run.
#[derive(Debug)]
pub(crate) struct CpuProbe {
    url: String,
    before: f64,
}

impl CpuProbe {
    /// Reads `url`'s CPU seconds once its exporter has refreshed.
    ///
    /// # Errors
    /// The endpoint cannot be reached or does not export the series.
    pub(crate) async fn start(url: &str) -> anyhow::Result<Self> {
        let before = settled_cpu_seconds(url).await?;
        Ok(Self {
            url: url.to_owned(),
            before,
        })
    }

    /// CPU seconds the server spent since [`CpuProbe::start`].
    ///
    /// # Errors
    /// As [`CpuProbe::start`], or the counter went backwards (the server restarted).
    pub(crate) async fn finish(self) -> anyhow::Result<f64> {
        let after = settled_cpu_seconds(&self.url).await?;
        if after < self.before {
            bail!(
                "{}: {SERIES} went down from {} to {after}: did the server restart?",
                self.url,
                self.before
            );
        }
        Ok(after - self.before)
    }
}

async fn settled_cpu_seconds(url: &str) -> anyhow::Result<f64> {
    tokio::time::sleep(banditd::telemetry::PERIOD + Duration::from_millis(200)).await;
    let text = tokio::time::timeout(TIMEOUT, scrape(url))
        .await
        .with_context(|| format!("{url}: no answer within {TIMEOUT:?}"))??;
    parse_series(&text, SERIES).with_context(|| {
        format!(
            "{url} does not export {SERIES} (banditd does; the no-op server with --metrics-addr)"
        )
    })
}

/// `GET` of a plain-HTTP metrics URL (`http://host:port[/path]`, path `/metrics` if none).
async fn scrape(url: &str) -> anyhow::Result<String> {
    let (host, path) = split_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    // HTTP/1.0: the server closes the connection after the answer, which ends the read.
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_BODY as u64)
        .read_to_end(&mut raw)
        .await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{url}: {status}");
    }
    Ok(body.to_owned())
}

/// `(host:port, path)` of `http://host:port[/path]`.
fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("metrics URL {url:?}: only http://host:port[/path] is supported");
    };
    let (host, path) = match rest.find('/') {
        Some(i) if i + 1 < rest.len() => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], "/metrics"),
        None => (rest, "/metrics"),
    };
    if host.is_empty() {
        bail!("metrics URL {url:?}: no host");
    }
    Ok((host, path))
}

/// The value of an unlabelled series in Prometheus text format.
fn parse_series(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_unlabelled_series_only() {
        let text = "# HELP process_cpu_seconds_total CPU\n\
                    process_cpu_seconds_total_x 9\n\
                    process_cpu_seconds_total 12.5\n";
        assert_eq!(parse_series(text, SERIES), Some(12.5));
        assert_eq!(parse_series("other 1\n", SERIES), None);
    }

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9464").unwrap(),
            ("127.0.0.1:9464", "/metrics")
        );
        assert_eq!(split_url("http://h:1/").unwrap(), ("h:1", "/metrics"));
        assert_eq!(split_url("http://h:1/m").unwrap(), ("h:1", "/m"));
        assert!(split_url("https://h:1").is_err());
        assert!(split_url("h:1").is_err());
    }
}
