//! The `banditd` binary: parse flags, set up logs and metrics, bind, serve until a signal.

use std::{io::IsTerminal, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use banditd::{Config, config::Secret, metrics, offline::cli as offline_cli, shutdown};
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

/// mimalloc as the global allocator, with plain `mi_malloc` where its blocks are aligned
/// enough anyway.
///
/// `mimalloc::MiMalloc` sends every allocation through `mi_malloc_aligned`, and mimalloc v3
/// serves an aligned request above 1 KiB whose size class is not a power of two by
/// over-allocating (`mi_theap_malloc_zero_aligned_at_overalloc`), which also marks the page
/// as holding interior pointers. tokio, hyper and tonic allocate a boxed future of a few
/// KiB per call, so that slow path was ~3 % of banditd's serving CPU under load
/// (`perf`, BENCHMARKS.md "Serving cost"). Every mimalloc block is 8-aligned (size classes
/// are whole words, pages start 16-aligned), and classes of a multiple of 16 bytes are
/// multiples of 16, so those requests take the plain calls; the rest keep the aligned ones.
/// This needs mimalloc built without padding: its `secure` and `debug` features add a few
/// bytes per block, and a 16-byte request would land in the 24-byte, only 8-aligned class
/// (`blocks_are_aligned` below checks the build in use).
#[cfg(feature = "mimalloc")]
mod alloc {
    use std::{
        alloc::{GlobalAlloc, Layout},
        ffi::c_void,
    };

    use libmimalloc_sys as mi;

    /// The global allocator (see the module docs).
    pub(crate) struct MiMalloc;

    /// Whether a plain mimalloc block of `layout.size()` bytes is aligned enough.
    fn plain(layout: Layout) -> bool {
        layout.align() <= 8 || (layout.align() == 16 && layout.size().is_multiple_of(16))
    }

    // SAFETY: every call goes to mimalloc, which returns blocks of at least the requested
    // size (or null); `plain` admits only layouts that its unaligned calls align (see the
    // module docs); frees and reallocations of aligned blocks are mimalloc's own.
    unsafe impl GlobalAlloc for MiMalloc {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: see the impl.
            unsafe {
                if plain(layout) {
                    mi::mi_malloc(layout.size()).cast()
                } else {
                    mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
                }
            }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: see the impl.
            unsafe {
                if plain(layout) {
                    mi::mi_zalloc(layout.size()).cast()
                } else {
                    mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
                }
            }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            // SAFETY: see the impl.
            unsafe { mi::mi_free(ptr.cast::<c_void>()) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: see the impl; the new layout keeps the alignment.
            unsafe {
                match Layout::from_size_align(new_size, layout.align()) {
                    Ok(new) if plain(new) => mi::mi_realloc(ptr.cast(), new_size).cast(),
                    _ => mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast(),
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Every layout the plain calls take comes back aligned, through growth and
        /// shrinking too; the others keep their alignment through the aligned calls.
        #[test]
        fn blocks_are_aligned() {
            let a = MiMalloc;
            let sizes = (1..=64)
                .chain((65..=9000).step_by(7))
                .chain([1 << 16, 1 << 20, 3 << 20]);
            for size in sizes {
                for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
                    let Ok(layout) = Layout::from_size_align(size, align) else {
                        continue;
                    };
                    // SAFETY: non-zero sizes; each block is passed on with the layout it
                    // has (realloc keeps the alignment).
                    unsafe {
                        let p = if size % 3 == 0 {
                            a.alloc_zeroed(layout)
                        } else {
                            a.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        p.write_bytes(0xA5, size);
                        let grown = size * 2 + 16;
                        let q = a.realloc(p, layout, grown);
                        assert_eq!(q as usize % align, 0, "grown to {grown}, align {align}");
                        assert_eq!((*q, *q.add(size - 1)), (0xA5, 0xA5));
                        let shrunk = size.div_ceil(2);
                        let layout = Layout::from_size_align(grown, align).unwrap();
                        let r = a.realloc(q, layout, shrunk);
                        assert_eq!(r as usize % align, 0, "shrunk to {shrunk}, align {align}");
                        assert_eq!(*r, 0xA5);
                        a.dealloc(r, Layout::from_size_align(shrunk, align).unwrap());
                    }
                }
            }
        }
    }
}

/// Contextual-bandit decisions over gRPC: Thompson sampling on a neural reward model, by MC
/// dropout (the default policy: one dropout mask set per decision, then a draw of the last
/// layer from a Bayesian linear regression on its features) or NeuralLinear (that regression
/// on the unmasked features), set per model in the config.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Model configuration (TOML). Without it, the embedded default runs: models `wheel`
    /// (fixed arms "0".."4", 2-d context) and `items` (per-arm features, 8-d context and items).
    #[arg(long, env = "BANDITD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides the file's `server.grpc_addr`).
    #[arg(long, env = "BANDITD_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Prometheus `/metrics` listen address (overrides the file's `server.metrics_addr`).
    #[arg(long, env = "BANDITD_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Log format; the level comes from `RUST_LOG` (default `info`). Text is coloured only
    /// when stderr is a terminal and `NO_COLOR` is unset.
    #[arg(long, env = "BANDITD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Data directory: the decision/reward log and the checkpoints (overrides the file's
    /// `storage.data_dir`; default `./data`).
    #[arg(long, env = "BANDITD_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Cluster mode: the NATS JetStream server(s) to use, `nats://HOST:PORT` (overrides the
    /// file's `cluster.url`; the other `[cluster]` settings keep their values or defaults).
    #[arg(long, env = "BANDITD_CLUSTER", global = true)]
    cluster: Option<String>,
    /// Cluster mode: serve only, never become a model's trainer (`cluster.trainer = false`).
    #[arg(long, env = "BANDITD_NO_TRAINER")]
    no_trainer: bool,
    /// Print the embedded default configuration as TOML and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write every logged decision, with its reward, as JSON lines to stdout (context,
    /// candidates, chosen arm, scores, model version, timestamps), for offline analysis.
    /// A decision's line is written when its window closes (log order), still open ones at
    /// the end. Works on a running server's data directory too. In cluster mode
    /// (`--cluster URL` or a `[cluster]` section) it reads the cluster's JetStream stream.
    Export {
        /// Only these models (repeatable); default: every model in the log.
        #[arg(long)]
        model: Vec<String>,
    },
    /// Estimate what candidate policies would have earned on logged traffic (IPS, SNIPS,
    /// doubly robust, 95 % intervals), beside the logged policy's actual mean reward.
    /// Reads the data directory (of a stopped server or a copy), a `banditd export` file
    /// (`--from FILE.jsonl`) or an Open Bandit Dataset CSV (`--from FILE.csv`).
    Evaluate(Box<offline_cli::EvaluateArgs>),
    /// Warm start: train a model on logged decisions (a `banditd export` file or an Open
    /// Bandit Dataset CSV) and write a checkpoint (plus the examples, in the log) into the
    /// data directory, which the server then starts from. The server must be stopped.
    Train(Box<offline_cli::TrainArgs>),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    // candle asks for the rayon thread count on every matmul and, with RAYON_NUM_THREADS
    // unset, re-reads /proc/cpuinfo each time (~20x slower batch-1 forward). One thread is
    // also what per-request inference wants. Set before any thread exists.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread has been started yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", toml::to_string(&Config::embedded_default())?);
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes are for a person at a terminal; in a file or a log collector they are noise.
    // (`NO_COLOR` set to anything but the empty string turns colour off: no-color.org.)
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded_default(),
    };
    if let Some(addr) = cli.grpc_addr {
        config.server.grpc_addr = addr;
    }
    if let Some(addr) = cli.metrics_addr {
        config.server.metrics_addr = addr;
    }
    if let Some(dir) = cli.data_dir {
        config.storage.data_dir = dir;
    }
    if let Some(url) = cli.cluster {
        config.cluster.get_or_insert_with(Default::default).url = url;
    }
    if cli.no_trainer
        && let Some(cluster) = &mut config.cluster
    {
        cluster.trainer = false;
    }
    if config.cluster.is_some() {
        config.validate()?;
    }
    // Tokens come from the environment only (never the command line, which `ps` shows). A
    // variable that is set but holds no token is refused, as an empty token file is: it was
    // meant to turn authentication on.
    let tokens = |name: &str| -> anyhow::Result<Vec<Secret>> {
        let Some(value) = std::env::var_os(name) else {
            return Ok(Vec::new());
        };
        let value = value
            .into_string()
            .map_err(|_| anyhow::anyhow!("{name}: not valid UTF-8"))?;
        let tokens: Vec<Secret> = value
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Secret(t.to_owned()))
            .collect();
        anyhow::ensure!(
            !tokens.is_empty(),
            "{name} is set but holds no token; refusing to start without authentication: \
             set a token, or unset {name} to run without"
        );
        Ok(tokens)
    };
    config.auth.tokens = tokens("BANDITD_TOKENS")?;
    config.auth.admin_tokens = tokens("BANDITD_ADMIN_TOKENS")?;
    match cli.command {
        Some(Command::Export { model }) => {
            return match &config.cluster {
                Some(cluster) => export_cluster(cluster, &model),
                None => export(&config, &model),
            };
        }
        Some(Command::Evaluate(args)) => return offline_cli::evaluate(&config, &args),
        Some(Command::Train(args)) => return offline_cli::train(&config, &args),
        None => {}
    }
    match banditd::server::raise_fd_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(before, after, "open-file limit raised to the hard limit");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            metrics::install(config.server.metrics_addr).with_context(|| {
                format!("cannot serve metrics on {}", config.server.metrics_addr)
            })?;
            let listener = tokio::net::TcpListener::bind(config.server.grpc_addr)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.grpc_addr))?;
            tracing::info!(metrics = %config.server.metrics_addr, "metrics at /metrics");
            banditd::run(config, listener, shutdown::signal()).await?;
            Ok(())
        })
}

/// `banditd export --cluster URL`: the decisions in the cluster's JetStream stream, as the
/// same JSON lines (read-only; the cluster may be running).
fn export_cluster(
    cluster: &banditd::config::ClusterConfig,
    models: &[String],
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let rows = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(banditd::cluster::export(cluster, models, &mut out))?;
    out.flush()?;
    for model in models {
        anyhow::ensure!(
            rows.contains_key(model),
            "the stream {} at {} has no decisions of model {model:?}",
            cluster.stream,
            cluster.url
        );
    }
    let total: u64 = rows.values().sum();
    eprintln!(
        "exported {total} decisions from stream {} at {}",
        cluster.stream, cluster.url
    );
    Ok(())
}

/// `banditd export`: the logged decisions as JSON lines. Reads the segments only, so the
/// server may be running.
fn export(config: &Config, models: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = &config.storage.data_dir;
    anyhow::ensure!(
        dir.is_dir(),
        "data directory {} does not exist (set --data-dir or BANDITD_DATA_DIR)",
        dir.display()
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (rows, summary) = banditd::storage::export(dir, models, &mut out)?;
    out.flush()?;
    if summary.segments == 0 {
        anyhow::bail!("{} holds no log (no log/ segments)", dir.display());
    }
    for model in models {
        anyhow::ensure!(
            rows.contains_key(model),
            "the log in {} has no decisions of model {model:?} (models in it: {:?})",
            dir.display(),
            {
                let mut names: Vec<&String> = rows.keys().collect();
                names.sort();
                names
            }
        );
    }
    let total: u64 = rows.values().sum();
    eprintln!(
        "exported {total} decisions from {} log segments ({} records{})",
        summary.segments,
        summary.records,
        if summary.corrupt_segments > 0 {
            format!(
                "; {} corrupt segments skipped, see above",
                summary.corrupt_segments
            )
        } else {
            String::new()
        }
    );
    Ok(())
}
